"""The consumer runtime against the real broker and database: duplicates, poison, retries."""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import AsyncIterator

import pytest

from consumers import lanes as h
from consumers.unit_of_work import RetryBudget
from producers.connection import KafkaConnection
from schemas.codec import encode
from schemas.envelope import Envelope
from tests.support import read_all, wait_until
from tests.worker_support import LedgerService, placed

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def service(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5, 1.0, 1.5))
    await service.setup()
    yield service
    await service.close()


async def test_a_duplicated_delivery_applies_once(service: LedgerService) -> None:
    envelope = Envelope.new(placed("o-dup"), "/tests/order")
    record = encode(envelope)
    assert record.key is not None
    await service.produce_raw(record.key, record.value, record.headers)
    await service.produce_raw(record.key, record.value, record.headers)  # the same event again
    await service.publish([placed("o-after")])
    await service.start()

    async def both_done() -> bool:
        return await service.ledger_rows() == 2

    await wait_until(both_done)
    await service.stop()
    assert await service.scalar("SELECT count(*) FROM {s}.ledger WHERE order_id = 'o-dup'") == 1
    assert await service.scalar("SELECT count(*) FROM {s}.outbox WHERE key = $1", b"o-dup") == 1
    assert await service.scalar("SELECT count(*) FROM {s}.inbox WHERE event_id = $1", envelope.id) == 1


async def test_poison_messages_are_dead_lettered_with_diagnostics_and_the_partition_moves_on(
    service: LedgerService, kafka: KafkaConnection
) -> None:
    good = encode(Envelope.new(placed("o-good"), "/tests/order"))
    invalid_value = json.dumps({"order_id": "o-bad", "customer_id": "c", "items": [], "total": {}}).encode()
    unknown = [(k, b"io.sagaline.Teleported" if k == "ce_type" else v) for k, v in good.headers]
    await service.produce_raw(b"o-json", b"{definitely not json", good.headers)
    await service.produce_raw(b"o-bad", invalid_value, good.headers)
    await service.produce_raw(b"o-unknown", good.value, unknown)
    await service.produce_raw(b"o-good", good.value, good.headers)
    await service.start()

    async def good_applied() -> bool:
        return await service.ledger_rows() == 1

    await wait_until(good_applied)
    dead = await read_all(kafka, service.lanes.dlt, at_least=3)
    await service.stop()
    dead.sort(key=lambda r: struct.unpack(">q", dict(r.headers)[h.H_ORIGINAL_OFFSET])[0])

    assert [r.key for r in dead] == [b"o-json", b"o-bad", b"o-unknown"]
    reasons = []
    for number, record in enumerate(dead):
        headers = dict(record.headers)
        assert headers[h.H_ORIGINAL_TOPIC].decode() == service.topic
        assert struct.unpack(">i", headers[h.H_ORIGINAL_PARTITION])[0] == 0
        assert struct.unpack(">q", headers[h.H_ORIGINAL_OFFSET])[0] == number
        assert struct.unpack(">q", headers[h.H_ORIGINAL_TIMESTAMP])[0] > 0
        assert headers[h.H_ORIGINAL_GROUP].decode() == service.group
        assert headers[h.H_FAILURE_CLASS] == b"permanent"
        assert headers[h.H_ATTEMPTS] == b"1"
        assert b"Traceback" in headers[h.H_EXCEPTION_STACKTRACE]
        assert headers[h.H_FIRST_FAILURE] == headers[h.H_LAST_FAILURE]
        assert headers["ce_id"] == dict(good.headers)["ce_id"]  # original headers kept
        reasons.append(headers[h.H_EXCEPTION_FQCN].decode())
    assert reasons == [
        "schemas.errors.NotJson",
        "schemas.errors.ContractViolation",
        "schemas.errors.UnknownMessageType",
    ]
    assert dead[0].value == b"{definitely not json"
    assert b"items" in dict(dead[1].headers)[h.H_EXCEPTION_MESSAGE]


async def test_a_handler_bug_is_dead_lettered_at_once(service: LedgerService, kafka: KafkaConnection) -> None:
    await service.publish([placed("o-bug", customer="bug"), placed("o-fine")])
    await service.start()
    [dead] = await read_all(kafka, service.lanes.dlt, at_least=1)

    async def fine_applied() -> bool:
        return await service.ledger_rows() == 1

    await wait_until(fine_applied)
    await service.stop()
    assert dict(dead.headers)[h.H_EXCEPTION_FQCN] == b"builtins.ZeroDivisionError"
    assert dict(dead.headers)[h.H_SAGA_ID] == b"o-bug"


async def test_transient_failures_that_recover_never_become_dead_letters(
    service: LedgerService, kafka: KafkaConnection
) -> None:
    # flaky-2 recovers inside the in-process budget (3 attempts); flaky-4 needs the retry lane
    await service.publish([placed("o-f2", customer="flaky-2"), placed("o-f4", customer="flaky-4")])
    await service.start()

    async def both_applied() -> bool:
        return await service.ledger_rows() == 2

    await wait_until(both_applied, timeout_s=60)
    await service.stop()
    assert await service.scalar("SELECT n FROM {s}.attempts WHERE order_id = 'o-f2'") == 3
    assert await service.scalar("SELECT n FROM {s}.attempts WHERE order_id = 'o-f4'") == 5
    assert len(await read_all(kafka, service.lanes.retry_topic(1), at_least=1)) == 1
    assert await read_all(kafka, service.lanes.dlt, at_least=0, timeout_s=2) == []


async def test_in_process_retries_stop_once_the_careful_path_has_run_its_window(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """Setup: a careful window of 0 s, five orders each failing once (flaky-1), published
    before the worker starts so that polls hold several of them. Validate: every message after
    the first failing one of a batch gets a single attempt and goes to the retry lane instead
    of being retried in process (with the default window they all recover in process, as
    the test above shows), and every order is still applied exactly once."""
    budget = RetryBudget(message_attempts=3, batch_attempts=3, initial_backoff_s=0.02, careful_window_s=0)
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5, 1.0, 1.5), budget=budget)
    await service.setup()
    try:
        await service.publish([placed(f"o-{i}", customer="flaky-1") for i in range(5)])
        await service.start()

        async def all_applied() -> bool:
            return await service.ledger_rows() == 5

        await wait_until(all_applied, timeout_s=60)
        await service.stop()
        assert len(await read_all(kafka, service.lanes.retry_topic(1), at_least=1)) >= 1
        assert await service.scalar("SELECT count(DISTINCT order_id) FROM {s}.ledger") == 5
        assert await service.scalar("SELECT max(n) FROM {s}.attempts") == 2
    finally:
        await service.close()


async def test_a_permanent_outage_walks_every_retry_lane_respecting_each_delay_then_dead_letters(
    service: LedgerService, kafka: KafkaConnection
) -> None:
    await service.publish([placed("o-down", customer="down")])
    await service.start()
    [dead] = await read_all(kafka, service.lanes.dlt, at_least=1, timeout_s=60)
    await service.stop()
    hops = [(await read_all(kafka, topic, at_least=1))[0] for topic in service.lanes.retry_topics]
    times = [r.timestamp for r in [*hops, dead]]
    gaps_s = [(later - earlier) / 1000 for earlier, later in itertools.pairwise(times)]
    for gap, delay in zip(gaps_s, service.delays, strict=True):
        assert gap >= delay - 0.05, f"lane consumed {gap:.2f}s after arrival, before its {delay}s delay"
    # per lane: one optimistic batch attempt, then three in its own savepoint; four lanes
    assert await service.scalar("SELECT n FROM {s}.attempts WHERE order_id = 'o-down'") == 16
    headers = dict(dead.headers)
    assert headers[h.H_ATTEMPTS] == b"4"
    assert headers[h.H_FAILURE_CLASS] == b"transient"
    assert headers[h.H_ORIGINAL_TOPIC].decode() == service.topic  # the first original survives
    assert headers[h.H_FIRST_FAILURE] < headers[h.H_LAST_FAILURE]
    assert sum(1 for k, _ in dead.headers if k == h.H_EXCEPTION_STACKTRACE) == 1  # headers do not grow
    assert await service.ledger_rows() == 0


async def test_a_failing_message_in_a_batch_costs_its_neighbours_nothing(
    service: LedgerService, kafka: KafkaConnection
) -> None:
    """Five messages in one partition, so one batch; the third is a handler bug. The fast
    path rolls back, the careful path applies the other four exactly once."""
    customers = ["c-1", "c-2", "bug", "c-4", "c-5"]
    for i, customer in enumerate(customers):
        record = encode(Envelope.new(placed(f"o-{i}", customer=customer), "/tests/order"))
        assert record.key is not None
        await service.produce_raw(record.key, record.value, record.headers)
    await service.start()
    [dead] = await read_all(kafka, service.lanes.dlt, at_least=1)

    async def four_applied() -> bool:
        return await service.ledger_rows() == 4

    await wait_until(four_applied)
    await service.stop()
    assert dead.key == b"o-2"
    orders = await service.scalar("SELECT array_agg(order_id ORDER BY order_id) FROM {s}.ledger")
    assert orders == ["o-0", "o-1", "o-3", "o-4"]
    assert await service.scalar("SELECT count(*) FROM {s}.outbox") == 4
    assert await service.scalar("SELECT count(*) FROM {s}.inbox") == 4
