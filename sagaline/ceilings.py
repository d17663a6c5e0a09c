"""Ceilings a benchmark is judged against, measured in the same run on the same machine:
Kafka's own perf tools (from the local stack's cached jars) and a PostgreSQL commit probe."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from typing import Any

import asyncpg

from producers.admin import delete_topics, ensure_topics, start_admin
from producers.connection import KafkaConnection
from sagaline.localstack import kafka as local_kafka
from sagaline.settings import Settings
from schemas.topics import TopicSpec


def _java_tool(libs: Any, main: str, *args: str) -> str:
    result = subprocess.run(
        ["java", "-Xmx512m", "-cp", f"{libs}/*", main, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout


async def kafka_perf(settings: Settings, kafka: KafkaConnection, bootstrap: str) -> dict[str, float]:
    """Kafka's own ProducerPerformance (200,000 x 400-byte records, acks=all, idempotent) and
    ConsumerPerformance on a fresh 6-partition topic: the broker's ceiling on this machine."""
    libs, _ = local_kafka.ensure_jars(settings.cache_dir)
    topic = f"bench.perf.{uuid.uuid4().hex[:6]}"
    await ensure_topics(kafka, [TopicSpec(topic, partitions=6, replication=1)])
    records = 200_000
    try:
        produced = await asyncio.to_thread(
            _java_tool, libs, "org.apache.kafka.tools.ProducerPerformance",
            "--topic", topic, "--num-records", str(records), "--record-size", "400", "--throughput", "-1",
            "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "enable.idempotence=true",
            "linger.ms=5",
        )  # fmt: skip
        producer_rate = float(re.findall(r"([\d.]+) records/sec", produced)[-1])
        consumed = await asyncio.to_thread(
            _java_tool, libs, "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records), "--hide-header",
        )  # fmt: skip
    finally:  # 80 MB of perf records are of no use once measured
        admin = await start_admin(kafka)
        try:
            await delete_topics(admin, [topic])
        finally:
            await admin.close()
    # data: start, end, MB, MB/s, nMsg, nMsg/s, ...
    consumer_rate = float(consumed.strip().splitlines()[-1].split(",")[5])
    return {
        "kafka_producer_perf_records_per_s": producer_rate,
        "kafka_consumer_perf_records_per_s": consumer_rate,
    }


async def postgres_commit_rate(dsn: str, seconds: float = 5.0, connections: int = 4) -> float:
    """Single-row INSERT + COMMIT from several connections, fsync on: the database's ceiling."""
    schema = f"bench_commit_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".t (id bigserial PRIMARY KEY, v text)'
    )
    await conn.close()
    deadline = time.monotonic() + seconds

    async def worker() -> int:
        c = await asyncpg.connect(dsn)
        n = 0
        try:
            while time.monotonic() < deadline:
                async with c.transaction():
                    await c.execute(f'INSERT INTO "{schema}".t (v) VALUES ($1)', "x" * 100)
                n += 1
        finally:
            await c.close()
        return n

    started = time.monotonic()
    total = sum(await asyncio.gather(*(worker() for _ in range(connections))))
    rate = total / (time.monotonic() - started)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()
    return rate
