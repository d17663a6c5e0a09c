"""A three-node KRaft cluster: RF=3 topics with min.insync.replicas=2 work end to end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from producers.admin import ensure_topics, topic_configs
from producers.connection import KafkaConnection
from schemas.topics import TopicSpec

pytestmark = pytest.mark.kafka


async def test_rf3_topic_produce_and_consume(kafka_cluster3: KafkaConnection, unique: str) -> None:
    topic = f"it.rf3.{unique}"
    report = await ensure_topics(kafka_cluster3, [TopicSpec(topic, partitions=3, replication=3)])
    assert report.created == [topic]
    admin = AIOKafkaAdminClient(**kafka_cluster3.client_kwargs())
    await admin.start()
    try:
        assert len((await admin.describe_cluster())["brokers"]) == 3
        # each broker learns new metadata, and followers join the ISR, on their own time (on a
        # loaded 2-core machine, three JVMs may take a while)
        description: dict[str, Any] = {"partitions": []}
        for _ in range(300):
            [description] = await admin.describe_topics([topic])
            if len(description["partitions"]) == 3 and all(
                len(p["replicas"]) == 3 and len(p["isr"]) == 3 for p in description["partitions"]
            ):
                break
            await asyncio.sleep(0.2)
        assert {len(p["replicas"]) for p in description["partitions"]} == {3}
        assert {len(p["isr"]) for p in description["partitions"]} == {3}
        configs = await topic_configs(admin, topic, ["min.insync.replicas", "unclean.leader.election.enable"])
        assert configs == {"min.insync.replicas": "2", "unclean.leader.election.enable": "false"}
        weak = f"it.rf3weak.{unique}"  # as another tool might have created it
        await admin.create_topics(
            [
                NewTopic(
                    weak, num_partitions=3, replication_factor=3, topic_configs={"min.insync.replicas": "1"}
                )
            ]
        )
    finally:
        await admin.close()
    drift = (await ensure_topics(kafka_cluster3, [TopicSpec(weak, partitions=3, replication=3)])).drift
    assert drift == {weak: ["min.insync.replicas=1 (want 2)"]}

    producer = AIOKafkaProducer(**kafka_cluster3.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(topic, str(i).encode(), key=str(i % 5).encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_cluster3.client_kwargs(),
        group_id=f"rf3-{unique}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    got: set[bytes] = set()
    try:
        while len(got) < 30:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                got.update(r.value for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert got == {str(i).encode() for i in range(30)}
