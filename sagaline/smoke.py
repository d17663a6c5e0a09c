"""A round trip through the real broker and database: the stack works end to end.

Creates a throwaway topic, produces with an idempotent `acks=all` producer, consumes
with a consumer group and manual commits, checks the committed offset, and runs a
transaction through asyncpg.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from producers.admin import delete_topics
from producers.connection import KafkaConnection


@dataclass
class SmokeResult:
    topic: str
    produced: int
    consumed: int
    committed_offset: int
    postgres_round_trip: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.consumed == self.produced == self.committed_offset and self.postgres_round_trip


async def run_smoke(kafka: KafkaConnection, postgres_dsn: str, messages: int = 10) -> SmokeResult:
    started = time.monotonic()
    topic = f"sagaline.smoke.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        sent = [f"smoke-{i}".encode() for i in range(messages)]
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for value in sent:
                await producer.send_and_wait(topic, value, key=b"smoke")
        finally:
            await producer.stop()
        group = f"sagaline-smoke-{uuid.uuid4().hex[:8]}"
        consumer = AIOKafkaConsumer(
            topic,
            **kafka.client_kwargs(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        received: list[bytes] = []
        try:
            while len(received) < messages:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    received.extend(r.value for r in records if r.value is not None)
                await consumer.commit()
            tp = TopicPartition(topic, 0)
            committed = await consumer.committed(tp) or 0
        finally:
            await consumer.stop()
    finally:
        await delete_topics(admin, [topic])
        await admin.close()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async with conn.transaction():
            echoed = await conn.fetchval("SELECT $1::text", topic)
    finally:
        await conn.close()
    return SmokeResult(
        topic=topic,
        produced=len(sent),
        consumed=len(received) if received == sent else -1,
        committed_offset=committed,
        postgres_round_trip=echoed == topic,
        seconds=round(time.monotonic() - started, 2),
    )
