"""The transactional outbox and its relay against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from producers import outbox
from producers.connection import KafkaConnection
from producers.errors import PublishValidationError
from producers.metrics import RelayMetrics
from producers.publisher import Publisher
from producers.relay import OutboxRelay, RelayOptions
from schemas.messages import OrderConfirmed
from schemas.topics import TopicMap
from schemas.values import Money
from tests.support import create_topic_map, decoded, pending_rows, read_all, stage_all, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def pool(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=6)
    assert pool is not None
    async with pool.acquire() as conn:
        await outbox.install(conn, pg_schema)
        await conn.execute(f'CREATE TABLE "{pg_schema}".orders (id text PRIMARY KEY, total bigint NOT NULL)')
    yield pool
    await pool.close()


def confirmed(order_id: str, amount: int) -> OrderConfirmed:
    return OrderConfirmed(order_id=order_id, total=Money(amount_minor=amount, currency="EUR"))


async def test_stage_needs_the_callers_transaction(pool: asyncpg.Pool[Any], pg_schema: str) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the caller's transaction"):
            await outbox.stage_message(conn, pg_schema, confirmed("o-1", 1), source="/t", topics=TopicMap())


async def test_an_invalid_event_is_refused_before_anything_commits(
    pool: asyncpg.Pool[Any], pg_schema: str
) -> None:
    async def place_with_bad_event() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f'INSERT INTO "{pg_schema}".orders VALUES ($1, $2)', "o-1", 100)
            await outbox.stage_payload(
                conn,
                pg_schema,
                "OrderConfirmed",
                {"order_id": "o-1", "total": {"amount_minor": 100, "currency": "euro"}},
                source="/sagaline/order",
                topics=TopicMap(),
            )

    with pytest.raises(PublishValidationError) as caught:
        await place_with_bad_event()
    assert caught.value.errors == [("total.currency", "String should match pattern '^[A-Z]{3}$'")]
    assert await pool.fetchval(f'SELECT count(*) FROM "{pg_schema}".orders') == 0
    assert await pool.fetchval(f'SELECT count(*) FROM "{pg_schema}".outbox') == 0


async def test_a_rolled_back_transaction_stages_nothing(pool: asyncpg.Pool[Any], pg_schema: str) -> None:
    class Abort(Exception):
        pass

    async def stage_then_fail() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.stage_message(conn, pg_schema, confirmed("o-1", 1), source="/t", topics=TopicMap())
            raise Abort

    with pytest.raises(Abort):
        await stage_then_fail()
    assert await pool.fetchval(f'SELECT count(*) FROM "{pg_schema}".outbox') == 0


async def test_relay_publishes_in_order_marks_rows_and_reports_metrics(
    kafka: KafkaConnection, pool: asyncpg.Pool[Any], pg_schema: str, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"ob{unique}.")
    staged = [confirmed(f"o-{i % 7}", i) for i in range(50)]
    await stage_all(pool, pg_schema, topics, staged)
    registry = CollectorRegistry()
    async with Publisher(kafka, source="/sagaline/relay") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema, metrics=RelayMetrics(registry))
        assert await relay.publish_pending() == 50
        assert await relay.publish_pending() == 0
    assert await pending_rows(pool, pg_schema) == 0
    records = await read_all(kafka, topics.orders, at_least=50)
    envelopes = decoded(records)
    assert [e.data for e in envelopes if e.data.order_id == "o-3"] == [
        m for m in staged if m.order_id == "o-3"
    ]
    assert sorted(e.data.total.amount_minor for e in envelopes) == list(range(50))  # type: ignore[attr-defined]
    published = registry.get_sample_value(
        "sagaline_outbox_published_total", {"schema": pg_schema, "topic": topics.orders}
    )
    assert published == 50
    assert registry.get_sample_value("sagaline_outbox_backlog", {"schema": pg_schema}) == 0
    assert (
        registry.get_sample_value("sagaline_outbox_publish_latency_seconds_count", {"schema": pg_schema})
        == 50
    )


async def test_passes_smaller_than_the_backlog_send_each_key_in_order(
    kafka: KafkaConnection, pool: asyncpg.Pool[Any], pg_schema: str, unique: str
) -> None:
    """A pass takes at most an equal share of its batch from each bucket it holds (here 10
    over up to 7 buckets), so a backlog goes out over many passes, each key in order."""
    topics = await create_topic_map(kafka, f"sh{unique}.")
    staged = [confirmed(f"o-{i % 7}", i) for i in range(50)]
    await stage_all(pool, pg_schema, topics, staged)
    async with Publisher(kafka, source="/sagaline/relay") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema, options=RelayOptions(batch_size=10))
        passes = []
        while sent := await relay.publish_pending(observe=False):
            passes.append(sent)
    assert sum(passes) == 50, passes
    assert len(passes) >= 5, passes
    assert await pending_rows(pool, pg_schema) == 0
    envelopes = decoded(await read_all(kafka, topics.orders, at_least=50))
    for key in {m.order_id for m in staged}:
        in_order = [m for m in staged if m.order_id == key]
        assert [e.data for e in envelopes if e.data.order_id == key] == in_order


async def test_notify_wakes_the_relay_long_before_its_poll_interval(
    kafka: KafkaConnection, pool: asyncpg.Pool[Any], pg_schema: str, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"nt{unique}.")
    stop = asyncio.Event()
    async with Publisher(kafka, source="/sagaline/relay") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema, options=RelayOptions(poll_interval_s=3600))
        running = asyncio.create_task(relay.run(stop))
        await asyncio.sleep(0.5)  # the relay has polled once and now waits
        await stage_all(pool, pg_schema, topics, [confirmed("o-n", 1)])

        async def drained() -> bool:
            return await pending_rows(pool, pg_schema) == 0

        await wait_until(drained, timeout_s=20)
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    assert [e.data for e in decoded(await read_all(kafka, topics.orders, at_least=1))] == [
        confirmed("o-n", 1)
    ]


async def test_prune_deletes_only_rows_published_before_the_retention(
    kafka: KafkaConnection, pool: asyncpg.Pool[Any], pg_schema: str, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"pr{unique}.")
    await stage_all(pool, pg_schema, topics, [confirmed("o-1", 1), confirmed("o-2", 2)])
    async with Publisher(kafka, source="/sagaline/relay") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema, options=RelayOptions(retention_s=3600))
        await relay.publish_pending()
        await pool.execute(
            f"UPDATE \"{pg_schema}\".outbox SET published_at = now() - interval '2 hours' WHERE key = $1",
            b"o-1",
        )
        await stage_all(pool, pg_schema, topics, [confirmed("o-3", 3)])  # pending: never pruned
        assert await relay.prune() == 1
    keys = {bytes(r["key"]) for r in await pool.fetch(f'SELECT key FROM "{pg_schema}".outbox')}
    assert keys == {b"o-2", b"o-3"}


async def test_a_row_the_broker_refuses_is_parked_and_its_bucket_moves_on(
    kafka: KafkaConnection, pool: asyncpg.Pool[Any], pg_schema: str, unique: str
) -> None:
    """Setup: three rows of one key (one bucket), the middle one larger than the broker takes.
    Fault: the relay's send of that row is refused (MessageSizeTooLargeError).
    Validate: it is parked with the reason and counted in sagaline_outbox_parked; the rows
    before and after it are published; nothing is retried forever."""
    topics = await create_topic_map(kafka, f"op{unique}.")
    await stage_all(pool, pg_schema, topics, [confirmed("o-1", n) for n in (1, 2, 3)])
    table = f'"{pg_schema}".outbox'
    huge_id = await pool.fetchval(f"SELECT id FROM {table} ORDER BY id OFFSET 1 LIMIT 1")
    await pool.execute(f"UPDATE {table} SET value = $2 WHERE id = $1", huge_id, b"x" * 3_000_000)
    registry = CollectorRegistry()
    async with Publisher(kafka, source="/sagaline/relay") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema, metrics=RelayMetrics(registry))
        first = await relay.publish_pending()
        second = await relay.publish_pending()
        assert first + second == 2
        assert await relay.publish_pending() == 0
    parked = await pool.fetch(f"SELECT id, park_reason FROM {table} WHERE parked_at IS NOT NULL")
    assert [r["id"] for r in parked] == [huge_id]
    assert "MessageSizeTooLargeError" in parked[0]["park_reason"]
    assert registry.get_sample_value("sagaline_outbox_parked", {"schema": pg_schema}) == 1
    assert registry.get_sample_value("sagaline_outbox_backlog", {"schema": pg_schema}) == 0
    amounts = [e.data.total.amount_minor for e in decoded(await read_all(kafka, topics.orders, at_least=2))]  # type: ignore[attr-defined]
    assert amounts == [1, 3]
