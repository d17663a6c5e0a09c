"""A three-node KRaft cluster: RF=3 topics with min.insync.replicas=2 work end to end; a consumer
finds where to read after a partition's leader moves."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.worker import _refresh_metadata
from producers.admin import ensure_topics, topic_configs
from producers.connection import KafkaConnection
from sagaline.localstack import kafka as local_kafka
from sagaline.settings import Settings
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


def _kafka_tool(main: str, *args: str) -> str:
    libs, _ = local_kafka.ensure_jars(Settings().cache_dir)
    return subprocess.run(
        ["java", "-Xmx256m", "-cp", f"{libs}/*", main, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


async def _leader(admin: AIOKafkaAdminClient, topic: str) -> tuple[int, list[int], list[int]]:
    """The leader, replicas and in-sync replicas of the topic's one partition, once the
    broker that answers knows it (each broker learns new metadata on its own time)."""
    for _ in range(300):
        [description] = await admin.describe_topics([topic])
        if description["partitions"]:
            [partition] = description["partitions"]
            return partition["leader"], partition["replicas"], partition["isr"]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} has no partition in the metadata")


async def test_a_consumer_that_asks_a_former_leader_where_to_read_finds_the_new_one_once_refreshed(
    kafka_cluster3: KafkaConnection, unique: str, tmp_path: Path
) -> None:
    """The position watchdog's first remedy (docs/consumers.md, "Position watchdog"), on a
    real cluster: a partition moves off its leader (a reassignment to the other two
    replicas) while a consumer holds metadata naming the old one, and the consumer must look
    up where to read. aiokafka asks the old leader, which answers NotLeaderForPartition, and
    asks it again every 100 ms without refreshing its metadata; `_refresh_metadata` (what the
    watchdog calls) ends that."""
    topic = f"it.moved.{unique}"
    await ensure_topics(kafka_cluster3, [TopicSpec(topic, partitions=1, replication=3)])
    tp = TopicPartition(topic, 0)
    bootstrap = kafka_cluster3.bootstrap_servers
    admin = AIOKafkaAdminClient(**kafka_cluster3.client_kwargs())
    await admin.start()
    producer = AIOKafkaProducer(**kafka_cluster3.client_kwargs(), acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(
        **kafka_cluster3.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        for _ in range(300):  # every replica in sync, so any of them can be elected
            _, replicas, isr = await _leader(admin, topic)
            if len(isr) == 3:
                break
            await asyncio.sleep(0.2)
        assert len(isr) == 3
        await producer.start()
        await producer.send_and_wait(topic, b"only", key=b"k")
        consumer.assign([tp])
        await consumer.start()
        assert (await consumer.getone()).value == b"only"
        consumer.pause(tp)  # no fetch that would answer NotLeader and refresh the metadata
        await asyncio.sleep(1.5)  # longer than a fetch's wait: none in flight
        leader = consumer._client.cluster.leader_for_partition(tp)  # as the consumer knows it

        # the partition moves to the other two replicas: the controller makes one of them leader
        order = [r for r in replicas if r != leader]
        plan = tmp_path / "plan.json"
        plan.write_text(
            json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": 0, "replicas": order}]})
        )
        reassign = (
            "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
            "--bootstrap-server",
            bootstrap,
        )
        await asyncio.to_thread(_kafka_tool, *reassign, "--reassignment-json-file", str(plan), "--execute")
        for _ in range(150):
            successor, now_replicas, _ = await _leader(admin, topic)
            if successor in order and sorted(now_replicas) == sorted(order):
                break
            await asyncio.sleep(0.2)
        assert successor in order
        assert sorted(now_replicas) == sorted(order)
        await asyncio.sleep(3)  # every broker has applied the move: the old leader says so

        # where to read: aiokafka looks the beginning up, asking the leader its metadata names
        seeking = asyncio.ensure_future(consumer.seek_to_beginning(tp))
        assert consumer._client.cluster.leader_for_partition(tp) == leader  # stale
        done, _ = await asyncio.wait([seeking], timeout=3)
        assert not done  # aiokafka alone: NotLeaderForPartition from the old leader, again and again
        assert _refresh_metadata(consumer)
        await asyncio.wait_for(seeking, 30)
        assert await consumer.position(tp) == 0
        assert consumer._client.cluster.leader_for_partition(tp) == successor
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()
