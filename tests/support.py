"""Helpers for tests against the real broker and database."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from producers import outbox
from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from schemas.codec import decode
from schemas.envelope import Envelope
from schemas.messages import Message
from schemas.topics import TopicMap

# The local stacks the tests start, as (Kafka base port, PostgreSQL port); a Kafka node i listens
# on base + 2i and base + 2i + 1. All below Linux's ephemeral range (32768-60999 by default): a
# port in it can be held by any client's outgoing socket at the moment a server binds it, which
# failed a CI run ("could not create listen socket for 127.0.0.1").
STACK_PORTS: dict[str, tuple[int, int]] = {
    "test-stack": (29092, 25432),
    "test-stack-3": (23092, 23432),  # three Kafka nodes: 23092-23097
    "test-stack-secure": (26092, 26432),  # and mutual TLS on 27092; its demo's metrics 26500-26504
    "cli": (21092, 21432),  # test_dev_cli's own `sagaline dev up`
}
STACK_BROKERS = {"test-stack-3": 3}
SECURE_METRICS_PORTS = range(26500, 26505)


async def create_topic_map(kafka: KafkaConnection, prefix: str, partitions: int = 3) -> TopicMap:
    topics = TopicMap(prefix=prefix, partitions=partitions, replication=1)
    await ensure_topics(kafka, topics.specs())
    return topics


async def read_all(
    kafka: KafkaConnection, topic: str, *, at_least: int, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from the beginning (no consumer group), until `at_least` are
    read and the end offsets are reached, or the timeout passes."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        partitions: list[TopicPartition] = []
        while not partitions:  # the topic may not exist yet (a worker creates its lanes)
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
            if not partitions:
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {topic} does not exist after {timeout_s}s")
                await asyncio.sleep(0.2)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
            if len(records) >= at_least:
                ends = await consumer.end_offsets(partitions)
                positions = {tp: await consumer.position(tp) for tp in partitions}
                if all(positions[tp] >= ends[tp] for tp in partitions):
                    break
        return records
    finally:
        await consumer.stop()


def decoded(records: list[ConsumerRecord[bytes, bytes]]) -> list[Envelope[Message]]:
    return [decode(r.value, r.headers) for r in records]


async def wait_until(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.1) -> None:
    """Poll an async predicate until it is true; fail loudly on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def stage_all(pool: asyncpg.Pool[Any], schema: str, topics: TopicMap, messages: list[Message]) -> None:
    """Stage `messages` in the outbox of `schema`, in one transaction, as the order service would."""
    async with pool.acquire() as conn, conn.transaction():
        for message in messages:
            await outbox.stage_message(conn, schema, message, source="/sagaline/order", topics=topics)


async def pending_rows(pool: asyncpg.Pool[Any], schema: str) -> int:
    count: int = await pool.fetchval(f'SELECT count(*) FROM "{schema}".outbox WHERE published_at IS NULL')
    return count


async def wait_consumed(kafka: KafkaConnection, group: str, topic: str, timeout_s: float = 60.0) -> None:
    """Until `group` has committed every record of `topic` (processed it, whatever it did):
    a positive signal to wait on where a record is expected to change nothing."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = await consumer.end_offsets(partitions)

        async def caught_up() -> bool:
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            return all(
                committed.get(tp) is not None and committed[tp].offset >= ends[tp] for tp in partitions
            )

        await wait_until(caught_up, timeout_s=timeout_s, interval_s=0.2)
    finally:
        await consumer.stop()
        await admin.close()


# Ports the tests' own servers bind (metrics endpoints, a second PostgreSQL, containers): above
# every fixed port in STACK_PORTS and below the ephemeral range. A port the OS hands out for
# bind(0) is in that range, and a client's outgoing socket could take it before the server
# binds it (a CI run lost its DLQ indexer to "address already in use" that way).
TEST_PORTS = range(30000, 32768)


def free_port_block(size: int) -> int:
    """A base port that, with the next `size` ports, was free a moment ago; in TEST_PORTS."""
    for _ in range(200):
        base = random.randrange(TEST_PORTS.start, TEST_PORTS.stop - size)
        try:
            for port in range(base, base + size + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports")


def free_port() -> int:
    """A port that was free a moment ago; in TEST_PORTS."""
    return free_port_block(0)


async def committed(kafka: KafkaConnection, group: str, topic: str) -> int:
    """Records of `topic` that `group` has committed, over all its partitions."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)
