"""Outbox relay throughput vs the raw aiokafka producer (the ceiling), and publish latency.

    python -m benchmarks relay

Uses SAGALINE_KAFKA_BOOTSTRAP / SAGALINE_POSTGRES_DSN, or starts the local stack.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from producers import outbox
from producers.admin import ensure_topics
from producers.publisher import SAFE_PRODUCER_DEFAULTS, Publisher
from producers.relay import OutboxRelay, RelayOptions
from sagaline.bootstrap import endpoints
from sagaline.settings import Settings
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.messages import OrderConfirmed
from schemas.topics import TopicMap
from schemas.values import Money


def _event(i: int) -> OrderConfirmed:
    return OrderConfirmed(order_id=f"order-{i % 1000:05d}", total=Money(amount_minor=i, currency="EUR"))


async def run_async(events: int = 20_000, latency_events: int = 1_000, rate: float = 200.0) -> dict[str, Any]:
    ends = await endpoints(Settings(), start_local=True)
    topics = TopicMap(prefix=f"bench{uuid.uuid4().hex[:6]}.", partitions=6, replication=1)
    await ensure_topics(ends.kafka, topics.specs())
    schema = f"bench_{uuid.uuid4().hex[:8]}"

    # Ceiling: the raw producer sending the same encoded records to the same topic.
    records = [encode(Envelope.new(_event(i), "/bench")) for i in range(events)]
    producer = AIOKafkaProducer(**ends.kafka.client_kwargs(), **SAFE_PRODUCER_DEFAULTS)
    await producer.start()
    started = time.perf_counter()
    futures = [await producer.send(topics.orders, r.value, key=r.key, headers=r.headers) for r in records]
    await asyncio.gather(*futures)
    raw_rate = events / (time.perf_counter() - started)
    await producer.stop()

    pool = await asyncpg.create_pool(ends.postgres_dsn, min_size=2, max_size=8)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await outbox.install(conn, schema)
            for start in range(0, events, 1000):
                async with conn.transaction():
                    for i in range(start, min(start + 1000, events)):
                        await outbox.stage_message(conn, schema, _event(i), source="/bench", topics=topics)
        async with Publisher(ends.kafka, source="/bench/relay") as publisher:
            relay = OutboxRelay(pool, publisher, schema, options=RelayOptions(batch_size=1000))
            started = time.perf_counter()
            published = 0
            while published < events:
                published += await relay.publish_pending()
            relay_rate = events / (time.perf_counter() - started)

            # Latency in steady state: one event per transaction at a fixed rate, relay running.
            await pool.execute(f'TRUNCATE "{schema}".outbox')
            stop = asyncio.Event()
            running = asyncio.create_task(relay.run(stop))
            async with pool.acquire() as conn:
                for i in range(latency_events):
                    async with conn.transaction():
                        await outbox.stage_message(conn, schema, _event(i), source="/bench", topics=topics)
                    await asyncio.sleep(1 / rate)
            pending_sql = f'SELECT count(*) FROM "{schema}".outbox WHERE published_at IS NULL'
            for _ in range(600):  # the relay drains what is left; give up after 30 s
                if not await pool.fetchval(pending_sql):
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await running
        percentiles = await pool.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY d)"
            f' FROM (SELECT extract(epoch FROM published_at - created_at) AS d FROM "{schema}".outbox) x'
        )
        assert percentiles is not None
        p50, p99 = percentiles
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await pool.close()
    result = {
        "events": events,
        "raw_producer_events_per_s": round(raw_rate),
        "relay_events_per_s": round(relay_rate),
        "ratio_vs_raw_producer": round(relay_rate / raw_rate, 3),
        "latency_events": latency_events,
        "latency_rate_per_s": rate,
        "publish_latency_p50_ms": round(float(p50) * 1000, 1),
        "publish_latency_p99_ms": round(float(p99) * 1000, 1),
    }
    print(
        f"relay: {result['relay_events_per_s']} events/s vs raw aiokafka producer "
        f"{result['raw_producer_events_per_s']} events/s (ratio {result['ratio_vs_raw_producer']}); "
        f"staged->acked latency at {rate:.0f}/s: p50 {result['publish_latency_p50_ms']} ms, "
        f"p99 {result['publish_latency_p99_ms']} ms"
    )
    return result


def run() -> dict[str, Any]:
    return asyncio.run(run_async())
