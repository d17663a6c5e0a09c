"""Consumer runtime throughput (trivial handler, full unit of work: decode, inbox row,
savepoint, batch transaction, offset commit) vs raw aiokafka consumption of the same topic
with manual commits (the ceiling), in the same run.

    python -m benchmarks consumer
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from consumers import inbox
from consumers.handlers import HandlerContext, Handlers
from consumers.lanes import Lanes
from consumers.unit_of_work import UnitOfWork
from consumers.worker import Worker, WorkerOptions
from producers import outbox
from producers.admin import ensure_topics
from producers.publisher import SAFE_PRODUCER_DEFAULTS, Publisher
from sagaline.bootstrap import endpoints
from sagaline.settings import Settings
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.messages import OrderConfirmed
from schemas.topics import TopicMap
from schemas.values import Money


async def run_async(events: int = 20_000, partitions: int = 6) -> dict[str, Any]:
    ends = await endpoints(Settings(), start_local=True)
    run_id = uuid.uuid4().hex[:6]
    topics = TopicMap(prefix=f"cbench{run_id}.", partitions=partitions, replication=1)
    await ensure_topics(ends.kafka, topics.specs())
    producer = AIOKafkaProducer(**ends.kafka.client_kwargs(), **SAFE_PRODUCER_DEFAULTS)
    await producer.start()
    futures = []
    for i in range(events):
        message = OrderConfirmed(order_id=f"order-{i % 5000}", total=Money(amount_minor=i, currency="EUR"))
        record = encode(Envelope.new(message, "/bench"))
        futures.append(
            await producer.send(topics.orders, record.value, key=record.key, headers=record.headers)
        )
    await asyncio.gather(*futures)
    await producer.stop()

    consumer = AIOKafkaConsumer(
        topics.orders,
        **ends.kafka.client_kwargs(),
        group_id=f"raw-{run_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    await consumer.start()
    seen = 0
    first_at = 0.0
    while seen < events:
        batch = await consumer.getmany(timeout_ms=500, max_records=500)
        if batch and not seen:
            first_at = time.perf_counter()  # from the first record: group join is not throughput
        seen += sum(len(records) for records in batch.values())
        if batch:
            await consumer.commit()
    raw_rate = events / (time.perf_counter() - first_at)
    await consumer.stop()

    schema = f"cbench_{run_id}"
    pool = await asyncpg.create_pool(ends.postgres_dsn, min_size=2, max_size=partitions + 2)
    assert pool is not None
    handlers = Handlers()

    @handlers.on(OrderConfirmed)
    async def trivial(ctx: HandlerContext, message: OrderConfirmed) -> None:
        return None

    try:
        async with pool.acquire() as conn:
            await inbox.install(conn, schema)
            await outbox.install(conn, schema)
        group = f"runtime-{run_id}"
        uow = UnitOfWork(pool, schema=schema, group=group, source="/bench", handlers=handlers, topics=topics)
        async with Publisher(ends.kafka, source="/bench") as publisher:
            worker = Worker(ends.kafka, uow, publisher, Lanes(group), WorkerOptions(topics=(topics.orders,)))
            await worker.ensure_lanes()
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run(stop))
            count_sql = f'SELECT count(*) FROM "{schema}".inbox'
            for _ in range(6000):  # up to 5 minutes
                if await pool.fetchval(count_sql) >= events:
                    break
                await asyncio.sleep(0.05)
            span_s = await pool.fetchval(
                f'SELECT extract(epoch FROM max(processed_at) - min(processed_at)) FROM "{schema}".inbox'
            )
            runtime_rate = events / float(span_s)  # from the first applied record, like the raw reader
            stop.set()
            await task
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await pool.close()
    result = {
        "events": events,
        "partitions": partitions,
        "raw_consumer_events_per_s": round(raw_rate),
        "runtime_events_per_s": round(runtime_rate),
        "ratio_vs_raw_consumer": round(runtime_rate / raw_rate, 3),
    }
    print(
        f"consumer runtime: {result['runtime_events_per_s']} events/s (decode, inbox, transaction, commit)"
        f" vs raw aiokafka consumer {result['raw_consumer_events_per_s']} events/s"
        f" (ratio {result['ratio_vs_raw_consumer']}); {events} events, {partitions} partitions"
    )
    return result


def run() -> dict[str, Any]:
    return asyncio.run(run_async())
