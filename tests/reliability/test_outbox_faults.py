"""Outbox relay under faults: kills, a crash between send and mark, competing relays."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from producers import outbox
from producers.connection import KafkaConnection
from producers.publisher import Ack, Publisher
from producers.relay import OutboxRelay
from schemas.messages import OrderConfirmed
from schemas.values import Money
from tests.processes import CliProcess
from tests.support import create_topic_map, decoded, pending_rows, read_all, stage_all, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def pool(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=6)
    assert pool is not None
    async with pool.acquire() as conn:
        await outbox.install(conn, pg_schema)
    yield pool
    await pool.close()


def _sequenced(key_count: int, total: int) -> list[OrderConfirmed]:
    """`total` events over `key_count` keys; amount_minor is the global sequence number."""
    return [
        OrderConfirmed(order_id=f"k-{i % key_count}", total=Money(amount_minor=i, currency="EUR"))
        for i in range(total)
    ]


def _relay(schema: str, kafka_bootstrap: str, postgres_dsn: str, log: Path) -> CliProcess:
    env = {"SAGALINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "SAGALINE_POSTGRES_DSN": postgres_dsn}
    return CliProcess(["relay", "--schema", schema, "--batch-size", "50", "--metrics-port", "0"], env, log)


async def test_relay_killed_mid_stream_publishes_everything_once_after_restart(
    kafka: KafkaConnection,
    kafka_bootstrap: str,
    postgres_dsn: str,
    pool: asyncpg.Pool[Any],
    pg_schema: str,
    unique: str,
    tmp_path: Path,
) -> None:
    """Setup: 2,000 events committed in the outbox while no relay runs (the service crashed
    after its commit). Fault: a relay starts and is SIGKILLed mid-stream. Validate: after a
    restart nothing is pending, and a consumer deduplicating on event id sees each event
    exactly once."""
    topics = await create_topic_map(kafka, f"rk{unique}.")
    events = _sequenced(key_count=40, total=2000)
    for start in range(0, len(events), 500):
        await stage_all(pool, pg_schema, topics, events[start : start + 500])
    assert await pending_rows(pool, pg_schema) == 2000

    first = _relay(pg_schema, kafka_bootstrap, postgres_dsn, tmp_path / "relay1.log")

    async def some_published() -> bool:
        return await pending_rows(pool, pg_schema) < 2000

    await wait_until(some_published, timeout_s=60)
    first.kill()
    left_after_kill = await pending_rows(pool, pg_schema)
    assert 0 < left_after_kill < 2000, "the kill must land mid-stream"
    pending_at_kill = {
        r["event_id"]
        for r in await pool.fetch(f'SELECT event_id FROM "{pg_schema}".outbox WHERE published_at IS NULL')
    }

    second = _relay(pg_schema, kafka_bootstrap, postgres_dsn, tmp_path / "relay2.log")

    async def drained() -> bool:
        return await pending_rows(pool, pg_schema) == 0

    await wait_until(drained, timeout_s=120)
    assert second.terminate() == 0, second.output()

    envelopes = decoded(await read_all(kafka, topics.orders, at_least=2000, timeout_s=60))
    unique_ids = {e.id for e in envelopes}
    assert len(unique_ids) == 2000
    assert sorted({e.id: e.data.total.amount_minor for e in envelopes}.values()) == list(range(2000))  # type: ignore[attr-defined]
    seen: set[str] = set()
    repeated: set[str] = set()
    for envelope in envelopes:
        (repeated if envelope.id in seen else seen).add(envelope.id)
    # Only rows the killed relay had sent but not yet marked can repeat: they were still
    # pending at the kill, and at most one pass (50 rows, --batch-size) was in flight.
    assert repeated <= pending_at_kill
    assert len(envelopes) - len(unique_ids) <= 50


async def test_a_crash_after_the_send_before_the_mark_resends_with_the_same_event_id(
    kafka: KafkaConnection, pool: asyncpg.Pool[Any], pg_schema: str, unique: str
) -> None:
    """Setup: 20 staged events. Fault: the relay dies after the broker acknowledged them and
    before it marked them published. Validate: a new relay sends them again with the same
    event ids; deduplicated, each event is seen once; nothing stays pending."""
    topics = await create_topic_map(kafka, f"cm{unique}.")
    await stage_all(pool, pg_schema, topics, _sequenced(key_count=1, total=20))

    class Crash(Exception):
        pass

    async def crash(acks: list[Ack]) -> None:
        assert len(acks) == 20
        raise Crash

    async with Publisher(kafka, source="/sagaline/relay") as publisher:
        with pytest.raises(Crash):
            await OutboxRelay(pool, publisher, pg_schema, after_send=crash).publish_pending()
        assert await pending_rows(pool, pg_schema) == 20
        assert await OutboxRelay(pool, publisher, pg_schema).publish_pending() == 20
    assert await pending_rows(pool, pg_schema) == 0

    envelopes = decoded(await read_all(kafka, topics.orders, at_least=40))
    assert len(envelopes) == 40
    by_id: dict[str, list[int]] = defaultdict(list)
    for envelope in envelopes:
        by_id[envelope.id].append(envelope.data.total.amount_minor)  # type: ignore[attr-defined]
    assert len(by_id) == 20
    assert all(len(amounts) == 2 and amounts[0] == amounts[1] for amounts in by_id.values())
    first_copies = [e.data.total.amount_minor for e in envelopes[:20]]  # type: ignore[attr-defined]
    assert first_copies == list(range(20))


async def test_two_relays_keep_per_key_order_over_thousands_of_events(
    kafka: KafkaConnection,
    kafka_bootstrap: str,
    postgres_dsn: str,
    pool: asyncpg.Pool[Any],
    pg_schema: str,
    unique: str,
    tmp_path: Path,
) -> None:
    """Setup: two relay processes on one outbox. Fault: none but contention: 4,000 events on
    80 keys staged in 40 transactions while both relays run. Validate: every event arrives,
    and per key the first arrival of each event is in staging order."""
    topics = await create_topic_map(kafka, f"tr{unique}.", partitions=6)
    relays = [_relay(pg_schema, kafka_bootstrap, postgres_dsn, tmp_path / f"relay{i}.log") for i in (1, 2)]
    events = _sequenced(key_count=80, total=4000)
    for start in range(0, len(events), 100):
        await stage_all(pool, pg_schema, topics, events[start : start + 100])
        await asyncio.sleep(0.02)

    async def drained() -> bool:
        return await pending_rows(pool, pg_schema) == 0

    await wait_until(drained, timeout_s=120)
    for relay in relays:
        assert relay.terminate() == 0, relay.output()

    envelopes = decoded(await read_all(kafka, topics.orders, at_least=4000, timeout_s=60))
    seen: set[str] = set()
    per_key: dict[str, list[int]] = defaultdict(list)
    for envelope in envelopes:  # read_all returns each partition in offset order
        if envelope.id not in seen:
            seen.add(envelope.id)
            per_key[envelope.data.order_id].append(envelope.data.total.amount_minor)  # type: ignore[attr-defined]
    assert len(seen) == 4000
    assert len(per_key) == 80
    for key, sequence in per_key.items():
        assert sequence == sorted(sequence), f"{key} out of order"
