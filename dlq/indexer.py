"""The DLQ index: one consumer over every group's dead-letter topic (`*.dlt`) that records
each record in PostgreSQL, so listing and filtering never scan Kafka. Offsets are committed
after the rows are; a redelivered record hits the unique (topic, partition, offset) key.

A dead-letter topic is untrusted input: `parse` never raises and returns only storable
values, and should a record still be refused by PostgreSQL for what it carries, it is
indexed with its raw bytes and no parsed fields rather than stopping the index.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from dlq import store
from dlq.record import parse, unparsed
from producers.connection import KafkaConnection

log = logging.getLogger(__name__)


def dlt_pattern(prefix: str = "") -> str:
    """Every dead-letter topic whose name starts with `prefix`."""
    return f"^{re.escape(prefix)}.*\\.dlt$"


def exact_pattern(topics: Iterable[str]) -> str:
    """Exactly these topics (a deployment's dead-letter topics, and no other's)."""
    return "^(" + "|".join(re.escape(topic) for topic in sorted(topics)) + ")$"


class Indexer:
    def __init__(
        self,
        kafka: KafkaConnection,
        pool: asyncpg.Pool[Any],
        schema: str,
        *,
        group: str = "sagaline-dlq-index",
        pattern: str | None = None,
        retention_s: float | None = None,
        prune_interval_s: float = 300.0,
    ) -> None:
        """`retention_s`: prune entries operators are done with (`store.prune`) every
        `prune_interval_s`; None keeps everything."""
        self.kafka = kafka
        self.pool = pool
        self.schema = schema
        self.group = group
        self.pattern = pattern or dlt_pattern()
        self.retention_s = retention_s
        self.prune_interval_s = prune_interval_s
        self.indexed = 0
        self.running = False

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,  # new groups' dead-letter topics are found within seconds
        )
        consumer.subscribe(pattern=self.pattern)
        await consumer.start()
        self.running = True
        last_prune = 0.0
        try:
            while not stop.is_set():
                if self.retention_s is not None and time.monotonic() - last_prune > self.prune_interval_s:
                    async with self.pool.acquire() as conn:
                        await store.prune(conn, self.schema, self.retention_s)
                    last_prune = time.monotonic()
                batch = await consumer.getmany(timeout_ms=500, max_records=1000)
                if not batch:
                    continue
                async with self.pool.acquire() as conn, conn.transaction():
                    for records in batch.values():
                        for r in records:
                            await self._index(conn, r)
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
                self.indexed += sum(len(records) for records in batch.values())
        finally:
            self.running = False
            await consumer.stop()

    async def _index(self, conn: Any, r: Any) -> None:
        headers = list(r.headers or ())
        row = {
            "dlt_topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key,
            "value": r.value,
        }
        try:
            async with conn.transaction():  # a savepoint: a refused row rolls back only itself
                await store.insert(
                    conn, self.schema, **row, headers=headers, fields=parse(r.topic, r.key, headers)
                )
        except asyncpg.DataError as exc:
            log.warning("%s[%d]@%d: indexed without its fields: %s", r.topic, r.partition, r.offset, exc)
            await store.insert(conn, self.schema, **row, headers=headers, fields=unparsed(r.topic))
