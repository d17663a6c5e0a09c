"""Dispatch after commit against a real Kafka and PostgreSQL: rows a worker hands to its
relay go out without a pass, and a row whose key still has an earlier row in flight waits
for the pass, which sends the key's rows in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from producers import outbox
from producers.connection import KafkaConnection
from producers.metrics import RelayMetrics
from producers.publisher import Ack, Publisher
from producers.relay import OutboxRelay
from schemas.envelope import Envelope
from schemas.messages import Message, OrderConfirmed
from schemas.topics import TopicMap
from schemas.values import Money
from tests.support import create_topic_map, decoded, read_all, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def pool(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await outbox.install(conn, pg_schema)
    yield pool
    await pool.close()


def confirmed(order_id: str, amount: int) -> Envelope[Message]:
    message = OrderConfirmed(order_id=order_id, total=Money(amount_minor=amount, currency="EUR"))
    return Envelope.new(message, "/sagaline/order")


async def stage(
    pool: asyncpg.Pool[Any], schema: str, topics: TopicMap, relay: OutboxRelay, *envelopes: Envelope[Message]
) -> list[outbox.Staged]:
    """Stage in one transaction as a unit of work does, and hand over what may go after the commit."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            staged = await outbox.stage_many(conn, schema, list(envelopes), topics, dispatch=relay)
        relay.hand(staged)
    return staged


def dispatched(registry: CollectorRegistry, schema: str) -> float:
    value = registry.get_sample_value("sagaline_outbox_dispatched_total", {"schema": schema})
    assert value is not None
    return value


async def test_handed_rows_go_out_without_a_pass_and_a_key_with_a_row_in_flight_waits_for_one(
    pool: asyncpg.Pool[Any], pg_schema: str, kafka: KafkaConnection, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"dp{unique}.")
    registry = CollectorRegistry()
    hold = asyncio.Event()
    holding = asyncio.Event()
    hold.set()

    async def after_send(acks: list[Ack]) -> None:
        if not hold.is_set():  # keep this send in flight: acknowledged, not yet known as such
            holding.set()
            await hold.wait()

    stop = asyncio.Event()
    async with Publisher(kafka, source="/sagaline/order") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema, metrics=RelayMetrics(registry), after_send=after_send)
        running = asyncio.create_task(relay.run(stop))
        try:
            # the relay learns the bucket of o-1 from the pass that sends its first row
            assert await stage(pool, pg_schema, topics, relay, confirmed("o-1", 1)) == []
            await wait_until(lambda: _published(pool, pg_schema, 1))
            # now o-1's next row is handed over and sent without a pass
            second = await stage(pool, pg_schema, topics, relay, confirmed("o-1", 2))
            assert len(second) == 1
            await wait_until(lambda: _published(pool, pg_schema, 2))
            assert dispatched(registry, pg_schema) == 1

            # o-1's third row is in flight (sent, its acknowledgement not yet taken in) ...
            hold.clear()
            third = await stage(pool, pg_schema, topics, relay, confirmed("o-1", 3))
            await asyncio.wait_for(holding.wait(), timeout=30)
            # ... so its fourth may not overtake it: not handed, left to a pass
            assert await stage(pool, pg_schema, topics, relay, confirmed("o-1", 4)) == []
            hold.set()
            await wait_until(lambda: _published(pool, pg_schema, 4))
            assert len(third) == 1
            assert dispatched(registry, pg_schema) == 2
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=30)

    records = await read_all(kafka, topics.orders, at_least=4)
    totals = [e.data.total.amount_minor for e in decoded(records) if isinstance(e.data, OrderConfirmed)]
    assert totals == [1, 2, 3, 4]


async def test_a_row_staged_while_no_relay_runs_waits_for_a_pass(
    pool: asyncpg.Pool[Any], pg_schema: str, kafka: KafkaConnection, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"dq{unique}.")
    async with Publisher(kafka, source="/sagaline/order") as publisher:
        relay = OutboxRelay(pool, publisher, pg_schema)
        assert relay.eligibility() == ([], [])
        assert await stage(pool, pg_schema, topics, relay, confirmed("o-9", 9)) == []
        assert await relay.publish_pending() == 1


async def _published(pool: asyncpg.Pool[Any], schema: str, rows: int) -> bool:
    """`rows` rows acknowledged and marked published (marks follow within MARK_DELAY_S)."""
    marked: int = await pool.fetchval(
        f'SELECT count(*) FROM "{schema}".outbox WHERE published_at IS NOT NULL'
    )
    return marked >= rows
