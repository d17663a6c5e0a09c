"""The foundation against the real broker and database: produce, consume, commit, SQL."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from producers.connection import KafkaConnection
from sagaline.smoke import run_smoke

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_idempotent_producer_and_group_consumer_with_manual_commits(
    kafka: KafkaConnection, unique: str
) -> None:
    topic, group = f"it.stack.{unique}", f"it-group-{unique}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    await admin.close()

    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = {}
        for i in range(20):
            meta = await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 4}".encode())
            sent[(meta.partition, meta.offset)] = f"v{i}".encode()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    received = {}
    try:
        while len(received) < len(sent):
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                received.update({(r.partition, r.offset): r.value for r in records})
        await consumer.commit()
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()

    assert received == sent
    per_partition = {p: sum(1 for (q, _) in sent if q == p) for p in (0, 1)}
    assert committed == per_partition


async def test_a_second_consumer_in_the_group_resumes_after_the_commit(
    kafka: KafkaConnection, unique: str
) -> None:
    topic, group = f"it.resume.{unique}", f"it-resume-{unique}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    for i in range(6):
        await producer.send_and_wait(topic, str(i).encode())
    await producer.stop()

    async def take(n: int, commit: bool) -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            **kafka.client_kwargs(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            while len(got) < n:
                record = await consumer.getone()
                got.append(record.value)
                if commit:
                    await consumer.commit({TopicPartition(topic, 0): record.offset + 1})
            return got
        finally:
            await consumer.stop()

    assert await take(3, commit=True) == [b"0", b"1", b"2"]
    assert await take(3, commit=False) == [b"3", b"4", b"5"]
    # nothing committed by the second reader: a third one starts where the first stopped
    assert await take(1, commit=False) == [b"3"]


async def test_asyncpg_transaction_round_trip(postgres_dsn: str, pg_schema: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE TABLE "{pg_schema}".kv (k text PRIMARY KEY, v int NOT NULL)')
        async with conn.transaction():
            await conn.execute(f'INSERT INTO "{pg_schema}".kv VALUES ($1, $2)', "a", 1)

        async def insert_b_then_duplicate_a() -> None:
            async with conn.transaction():
                await conn.execute(f'INSERT INTO "{pg_schema}".kv VALUES ($1, $2)', "b", 2)
                await conn.execute(f'INSERT INTO "{pg_schema}".kv VALUES ($1, $2)', "a", 3)

        with pytest.raises(asyncpg.UniqueViolationError):
            await insert_b_then_duplicate_a()
        rows = await conn.fetch(f'SELECT k, v FROM "{pg_schema}".kv ORDER BY k')
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("a", 1)]  # the failed transaction left nothing


async def test_smoke_round_trip_reports_ok(kafka: KafkaConnection, postgres_dsn: str) -> None:
    result = await run_smoke(kafka, postgres_dsn, messages=25)
    assert result.ok, result
    assert (result.produced, result.consumed, result.committed_offset) == (25, 25, 25)
