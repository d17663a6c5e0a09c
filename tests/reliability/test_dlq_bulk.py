"""A large replay: 10,000 dead letters from one outage, replayed after the fix (chaos tier:
minutes long, run with `make chaos`)."""

from __future__ import annotations

import asyncio

import pytest

from dlq import actions, store
from dlq.indexer import Indexer, dlt_pattern
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from tests.saga_support import SagaPlatform, order
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.chaos]


@pytest.mark.timeout(1800)
async def test_replaying_10000_dead_letters_ends_every_saga_with_invariants_intact(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """Setup: the saga; 10,000 orders from 1,000 customers. Fault: payment's accounts table is
    renamed (a bad migration): every charge dead-letters. Validate: all 10,000 are indexed;
    after the fix one replay sends them all (progress reported), every saga ends, the
    invariants hold and no order is charged twice."""
    total = 10_000
    saga = SagaPlatform(kafka, postgres_dsn, unique, payment_timeout_s=3600, stock_timeout_s=3600)
    await saga.setup([(f"c{i}", 10**9) for i in range(1000)], [("mug", 10**6)])
    schema = saga.config.schema("dlq")
    assert saga.pool is not None
    async with saga.pool.acquire() as conn:
        await store.install(conn, schema)
    stop = asyncio.Event()
    prefix = saga.config.topics.prefix + saga.config.prefix
    indexer = Indexer(kafka, saga.pool, schema, group=f"{prefix}dlq-index", pattern=dlt_pattern(prefix))
    indexing = asyncio.create_task(indexer.run(stop))
    try:
        await saga.scalar("ALTER TABLE {payment}.accounts RENAME TO accounts_old")
        await saga.start()
        await saga.publish(*[order(f"o-{i}", customer=f"c{i % 1000}") for i in range(total)])

        async def all_indexed() -> bool:
            count = await saga.scalar(f'SELECT count(*) FROM "{schema}".dead_letters')
            return bool(count >= total)

        await wait_until(all_indexed, timeout_s=900)
        await saga.scalar("ALTER TABLE {payment}.accounts_old RENAME TO accounts")
        seen: list[int] = []
        async with Publisher(kafka, source="/sagaline/dlq") as publisher:
            report = await actions.replay(
                saga.pool,
                publisher,
                schema,
                store.Filter(group=saga.config.group("payment")),
                actor="chaos",
                progress=lambda done, _: seen.append(done),
            )
        assert report.sent == total
        assert seen[-1] == total
        assert len(seen) >= total // 200  # the progress callback saw every chunk

        async def all_ended() -> bool:
            ended = await saga.scalar(
                "SELECT count(*) FROM {order}.orders WHERE status IN ('CONFIRMED', 'CANCELLED')"
            )
            return bool(ended == total)

        await wait_until(all_ended, timeout_s=900)
        result = await saga.invariants()
        assert result.ok, result.violations[:10]
        assert await saga.scalar("SELECT count(*) FROM {order}.orders WHERE status = 'CONFIRMED'") == total
    finally:
        stop.set()
        await indexing
        await saga.close()
