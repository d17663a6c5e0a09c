"""Operator DLQ tooling on real Kafka and PostgreSQL: index, inspect, replay, edit, rate."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from consumers import lanes as h
from consumers.lanes import Lanes, first_retry_lane
from dlq import actions, store
from dlq.metrics import DeadLetterGauges
from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.topics import TopicSpec
from tests.dlq_support import Operator
from tests.saga_support import SagaPlatform, order
from tests.support import decoded, read_all, wait_consumed

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def operator(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[Operator]:
    saga = SagaPlatform(kafka, postgres_dsn, unique)
    await saga.setup([("alice", 100_000)], [("mug", 100)])
    op = Operator(saga)
    await op.start_indexer()
    yield op
    await op.close()
    await saga.close()


async def test_poison_is_indexed_fixed_and_replayed_exactly_once_only_to_the_failing_group(
    operator: Operator, kafka: KafkaConnection
) -> None:
    """Setup: the saga with a bad migration (payment's accounts table renamed). Fault: the
    charge fails permanently and dead-letters. Validate: it is indexed with its diagnostics;
    a dry run changes nothing; after the fix, a replay completes the saga with one charge;
    replaying again changes nothing; only the payment group saw the replay."""
    saga = operator.saga
    await saga.scalar("ALTER TABLE {payment}.accounts RENAME TO accounts_old")
    await saga.start()
    await saga.publish(order("o-1", items=[("mug", 2, 1500)]))
    found = await operator.wait_entries(1)
    assert len(found) == 1, [(e.consumer_group, e.exception_type, e.exception_message) for e in found]
    [entry] = found
    assert entry.consumer_group == saga.config.group("payment")
    assert entry.exception_type == "asyncpg.exceptions.UndefinedTableError"
    # the indexer's gauges (what the dead-letter alerts read) see it, from the same index
    registry = CollectorRegistry()
    gauges = DeadLetterGauges(registry, [saga.config.group(s) for s in ("order", "payment")])
    await gauges.refresh(operator.pool, operator.schema)
    labels = {"group": saga.config.group("payment"), "failure_class": "permanent", "status": "new"}
    assert registry.get_sample_value("sagaline_dlq_entries", labels) == 1
    oldest = registry.get_sample_value("sagaline_dlq_oldest_new_age_seconds")
    assert oldest is not None
    assert 0 <= oldest < 120
    assert entry.event_type == "io.sagaline.OrderPlaced"
    assert entry.saga_id == "o-1"
    assert entry.source_topic == saga.config.topics.orders
    assert (await saga.status("o-1") or {})["status"] == "PENDING_PAYMENT"

    lane = first_retry_lane(entry.dlt_topic)
    dry = await operator.replay(store.Filter(ids=(entry.id,)), dry_run=True)
    assert [(i.id, i.lane) for i in dry.items] == [(entry.id, lane)]
    assert dry.sent == 0
    assert (await operator.entries(ids=(entry.id,)))[0].status == "new"
    assert await read_all(kafka, lane, at_least=0, timeout_s=2) == []

    await saga.scalar("ALTER TABLE {payment}.accounts_old RENAME TO accounts")  # the fix
    report = await operator.replay(store.Filter(ids=(entry.id,)))
    assert report.sent == 1
    await saga.wait_status("o-1", "CONFIRMED")
    assert (await operator.entries(ids=(entry.id,)))[0].status == "replayed"
    charged = "SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'"
    assert await saga.scalar(charged) == 97_000

    await operator.replay(store.Filter(ids=(entry.id,)))  # again: the inbox drops it
    await wait_consumed(kafka, entry.consumer_group, lane)
    assert await saga.scalar(charged) == 97_000
    assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 1
    assert (await operator.entries(ids=(entry.id,)))[0].replay_count == 2

    orders_topic = decoded(await read_all(kafka, saga.config.topics.orders, at_least=2))
    assert [e.id for e in orders_topic].count(entry.event_id) == 1  # other groups saw nothing new
    lane_records = await read_all(kafka, lane, at_least=2)
    assert {dict(r.headers)["ce_id"].decode() for r in lane_records} == {entry.event_id}
    audit = await operator.audit()
    assert [(a["action"], a["dry_run"], a["count"], a["actor"]) for a in audit] == [
        ("replay", True, 1, "test-operator"),
        ("replay", False, 1, "test-operator"),
        ("replay", False, 1, "test-operator"),
    ]


async def test_edit_refuses_an_invalid_payload_and_sends_exactly_one_corrected_copy(
    operator: Operator, kafka: KafkaConnection
) -> None:
    saga = operator.saga
    await saga.start()
    bad = order("o-2").model_dump()
    bad["currency"] = "eur"  # an upstream bug
    good_headers = encode(Envelope.new(order("o-2"), "/upstream/buggy")).headers
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    await producer.send_and_wait(
        saga.config.topics.ingress, json.dumps(bad).encode(), key=b"o-2", headers=good_headers
    )
    await producer.stop()
    # both groups reading the ingress topic reject it; the order service's entry is the one to fix
    [entry] = await operator.wait_entries(1, group=saga.config.group("order"))
    tracker_entries = await operator.wait_entries(1, group=saga.config.group("tracker"))
    assert entry.exception_type == tracker_entries[0].exception_type == "schemas.errors.ContractViolation"
    lane = first_retry_lane(entry.dlt_topic)

    async with Publisher(kafka, source="/sagaline/dlq") as publisher:
        with pytest.raises(actions.EditRefused) as refused:
            await actions.edit(
                operator.pool, publisher, operator.schema, entry.id, {**bad, "items": []}, actor="op"
            )
        assert [path for path, _ in refused.value.errors] == ["currency", "items"]
        assert (await operator.entries(ids=(entry.id,)))[0].status == "new"
        fixed = {**bad, "currency": "EUR"}
        report = await actions.edit(operator.pool, publisher, operator.schema, entry.id, fixed, actor="op")
    assert report.corrects_event_id == entry.event_id
    assert report.new_event_id != entry.event_id
    await saga.wait_status("o-2", "CONFIRMED")
    [sent] = await read_all(kafka, lane, at_least=1)
    assert dict(sent.headers)["sagaline_corrects"].decode() == entry.event_id
    assert (await operator.entries(ids=(entry.id,)))[0].status == "resolved"
    assert await saga.scalar("SELECT count(*) FROM {order}.orders") == 1
    async with Publisher(kafka, source="/sagaline/dlq") as publisher:
        with pytest.raises(actions.EditRefused, match="resolved"):
            await actions.edit(operator.pool, publisher, operator.schema, entry.id, fixed, actor="op")


async def _craft_dead_letters(kafka: KafkaConnection, lanes: Lanes, count: int) -> None:
    group = lanes.group
    await ensure_topics(
        kafka, [TopicSpec(lanes.dlt, partitions=3), TopicSpec(lanes.retry_topic(1), partitions=3)]
    )
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    futures = []
    for i in range(count):
        record = encode(Envelope.new(order(f"r-{i}"), "/upstream/shop"))
        headers = [
            *record.headers,
            (h.H_ORIGINAL_GROUP, group.encode()),
            (h.H_EXCEPTION_FQCN, b"builtins.KeyError"),
        ]
        futures.append(await producer.send(lanes.dlt, record.value, key=record.key, headers=headers))
    await asyncio.gather(*futures)
    await producer.stop()


async def test_replay_at_50_per_second_never_exceeds_the_rate(
    operator: Operator, kafka: KafkaConnection, unique: str
) -> None:
    """`--rate` is a ceiling an operator relies on to spare a recovering service: the
    records' broker timestamps never come faster than it (a slow machine only spreads them
    further, so this cannot flake; how close it gets to the rate is not asserted)."""
    config = operator.saga.config
    lanes = Lanes(f"{config.prefix}rate", topic_prefix=config.topics.prefix)
    await _craft_dead_letters(kafka, lanes, 300)
    await operator.wait_entries(300, group=lanes.group)
    before_ms = time.time() * 1000
    report = await operator.replay(store.Filter(group=lanes.group), rate=50.0)
    assert report.sent == 300
    records = await read_all(kafka, lanes.retry_topic(1), at_least=300)
    stamps = sorted(r.timestamp for r in records)
    early = [k for k, stamp in enumerate(stamps) if stamp < before_ms + k * 1000 / 50 - 5]
    assert early == [], "records sent before their turn at 50/s"


def _cli(operator: Operator, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SAGALINE_KAFKA_BOOTSTRAP": operator.saga.kafka.bootstrap_servers,
        "SAGALINE_POSTGRES_DSN": operator.saga.postgres_dsn,
        "SAGALINE_SAGA_PREFIX": operator.saga.config.prefix,
        "SAGALINE_TOPIC_PREFIX": operator.saga.config.topics.prefix,
        "SAGALINE_OPERATOR": "cli-operator",
    }
    return subprocess.run(
        [sys.executable, "-m", "sagaline", "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_cli_lists_groups_shows_archives_and_purges(
    operator: Operator, kafka: KafkaConnection, unique: str
) -> None:
    config = operator.saga.config
    group = f"{config.prefix}cli"
    await _craft_dead_letters(kafka, Lanes(group, topic_prefix=config.topics.prefix), 5)
    entries = await operator.wait_entries(5, group=group)

    stats = json.loads(_cli(operator, "stats", "--group", group, "--json").stdout)
    assert [(s["consumer_group"], s["exception_type"], s["count"]) for s in stats] == [
        (group, "builtins.KeyError", 5)
    ]
    listed = json.loads(
        _cli(operator, "list", "--group", group, "--limit", "2", "--page", "2", "--json").stdout
    )
    assert (listed["total"], [e["id"] for e in listed["entries"]]) == (5, [entries[2].id, entries[3].id])
    shown = json.loads(_cli(operator, "show", str(entries[0].id), "--json").stdout)
    assert shown["decodes"] is True
    assert shown["payload"]["customer_id"] == "***"  # redacted
    assert shown["payload"]["order_id"] == entries[0].saga_id

    refused = _cli(operator, "purge", "--group", group)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    archived = json.loads(_cli(operator, "archive", "--id", str(entries[0].id), "--yes", "--json").stdout)
    assert archived["count"] == 1
    purged = json.loads(
        _cli(operator, "purge", "--group", group, "--status", "new", "--yes", "--json").stdout
    )
    assert purged["count"] == 4
    assert [e.status for e in await operator.entries(group=group)] == ["archived"]
    actors = {a["actor"] for a in await operator.audit()}
    assert actors == {"cli-operator"}
    bad = _cli(operator, "replay", "--group", group, "--rate", "fast")
    assert bad.returncode == 2
    assert "not a rate like 50/s" in bad.stderr


async def test_a_replay_after_the_deadline_is_answered_never_charged_and_the_saga_ends(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """Setup: payment dead-letters every charge (bad migration). Fault: the order's payment
    deadline passes meanwhile, so the cancellation reaches payment before the charge does.
    Validate: after the fix, the replayed charge is refused as cancelled, the order ends
    CANCELLED, nobody is charged, the invariants hold."""
    saga = SagaPlatform(kafka, postgres_dsn, unique, payment_timeout_s=2.0)
    await saga.setup([("alice", 100_000)], [("mug", 100)])
    op = Operator(saga)
    await op.start_indexer()
    try:
        await saga.scalar("ALTER TABLE {payment}.accounts RENAME TO accounts_old")
        await saga.start()
        await saga.publish(order("o-late"))
        [entry] = await op.wait_entries(1, group=saga.config.group("payment"))
        await saga.wait_status("o-late", "CANCELLING", timeout_s=30)
        await saga.scalar("ALTER TABLE {payment}.accounts_old RENAME TO accounts")
        await op.replay(store.Filter(ids=(entry.id,)))
        result = await saga.wait_status("o-late", "CANCELLED")
        assert (result["cancel_reason"], result["payment"]) == ("deadline_expired", "failed")
        assert (
            await saga.scalar("SELECT status FROM {payment}.payments WHERE order_id = 'o-late'") == "declined"
        )
        assert (
            await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
            == 100_000
        )
        report = await saga.invariants()
        assert report.ok, report.violations
    finally:
        await op.close()
        await saga.close()
