"""The outbox relay: publishes staged rows in order per key, marks them after the broker's ack.

One pass visits every bucket with pending rows. For each, in one transaction: take the
bucket's advisory lock (skip it if another relay holds it), read its pending rows in id
order, send them all, wait for the acknowledgements, mark the acknowledged prefix
published, commit. A crash before the mark re-sends those rows later under the same event
id, which consumers drop as duplicates. Woken by LISTEN/NOTIFY, with a polling fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.structs import RecordMetadata, TopicPartition

from producers import failpoints
from producers.db import qualified
from producers.errors import DeliveryError
from producers.metrics import RelayMetrics
from producers.outbox import NOTIFY_CHANNEL
from producers.publisher import Ack, Publisher
from schemas.codec import Record

log = logging.getLogger(__name__)

AfterSend = Callable[[list[Ack]], Awaitable[None]]


@dataclass(frozen=True)
class RelayOptions:
    batch_size: int = 500
    concurrency: int = 4
    poll_interval_s: float = 1.0
    retention_s: float = 7 * 24 * 3600.0
    prune_interval_s: float = 300.0


GAUGE_INTERVAL_S = 1.0


class OutboxRelay:
    """Publishes one service schema's outbox through a `Publisher`."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        publisher: Publisher,
        schema: str,
        *,
        options: RelayOptions | None = None,
        metrics: RelayMetrics | None = None,
        after_send: AfterSend | None = None,
    ) -> None:
        """`after_send` runs after the broker acknowledged a batch and before it is marked
        published: the seam where reliability tests inject a crash."""
        self.pool = pool
        self.publisher = publisher
        self.schema = schema
        self.table = qualified(schema, "outbox")
        self.options = options or RelayOptions()
        self.metrics = metrics
        self.after_send = after_send
        self._lock_class = zlib.crc32(schema.encode()) - 2**31  # an int4 per schema
        self._wake = asyncio.Event()

    async def publish_pending(self, *, observe: bool = True) -> int:
        """One pass over every bucket with pending rows; returns rows published. `observe`:
        also refresh the backlog gauges (one more query)."""
        buckets = [
            r["bucket"]
            for r in await self.pool.fetch(
                f"SELECT DISTINCT bucket FROM {self.table} WHERE published_at IS NULL AND parked_at IS NULL"
            )
        ]
        limit = asyncio.Semaphore(self.options.concurrency)

        async def one(bucket: int) -> int:
            async with limit:
                return await self._publish_bucket(bucket)

        # Every bucket's pass ends (published or failed) before a failure is raised, so no
        # pass outlives this call and races the next one.
        results = await asyncio.gather(*(one(b) for b in buckets), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if observe:
            await self._observe_backlog()
        return sum(r for r in results if isinstance(r, int))

    async def _publish_bucket(self, bucket: int) -> int:
        failure: DeliveryError | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", self._lock_class, bucket):
                return 0  # another relay is on it
            rows = await conn.fetch(
                f"SELECT id, event_id, topic, key, value, headers, created_at FROM {self.table}"
                " WHERE bucket = $1 AND published_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT $2",
                bucket,
                self.options.batch_size,
            )
            if not rows:
                return 0
            acks: list[Ack] = []
            futures: list[asyncio.Future[Any]] = []
            failpoints.hit("relay.before-send")
            for row in rows:
                if failpoints.enabled("relay.drop") and zlib.crc32(row["event_id"].encode()) % 10 == 0:
                    futures.append(_dropped(row))  # the defect: marked published, never sent
                    continue
                try:
                    futures.append(await self.publisher.enqueue(row["topic"], _record(row)))
                except DeliveryError as exc:
                    failure = exc
                    break
            results = await asyncio.gather(
                *(
                    Publisher.acknowledged(f, r["topic"], r["event_id"])
                    for r, f in zip(rows, futures, strict=False)
                ),
                return_exceptions=True,
            )
            for result in results:  # the acknowledged prefix is marked; the rest goes again next pass
                if isinstance(result, BaseException):
                    failure = (
                        result
                        if isinstance(result, DeliveryError)
                        else DeliveryError(repr(result), outcome_unknown=True)
                    )
                    break
                acks.append(result)
            if self.after_send is not None:
                await self.after_send(acks)
            failpoints.hit("relay.after-send")  # acknowledged, not yet marked published
            if acks:
                await conn.execute(
                    f"UPDATE {self.table} SET published_at = clock_timestamp(), attempts = attempts + 1"
                    " WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in rows[: len(acks)]],
                )
            if failure is not None and failure.record_refused:
                refused = rows[len(acks)]
                await conn.execute(
                    f"UPDATE {self.table} SET parked_at = clock_timestamp(), park_reason = $2,"
                    " attempts = attempts + 1 WHERE id = $1",
                    refused["id"],
                    str(failure)[:1000],
                )
                log.error(
                    "outbox %s: parked row %d (event %s, topic %s), the broker refuses it: %s",
                    self.schema,
                    refused["id"],
                    refused["event_id"],
                    refused["topic"],
                    failure,
                )
                failure = None  # the rest of the bucket goes on at once
        self._observe_published(rows[: len(acks)])
        if failure is not None:
            if self.metrics:
                self.metrics.publish_failures.labels(self.schema).inc()
            log.warning(
                "outbox %s bucket %d: %s; %d row(s) retried next pass",
                self.schema,
                bucket,
                failure,
                len(rows) - len(acks),
            )
        return len(acks)

    def _observe_published(self, rows: list[asyncpg.Record]) -> None:
        if not self.metrics or not rows:
            return
        now = datetime.now(UTC)
        for row in rows:
            self.metrics.published.labels(self.schema, row["topic"]).inc()
            self.metrics.latency.labels(self.schema).observe((now - row["created_at"]).total_seconds())

    async def _observe_backlog(self) -> None:
        if not self.metrics:
            return
        count, oldest, parked = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE parked_at IS NULL),"
            " min(created_at) FILTER (WHERE parked_at IS NULL),"
            f" count(*) FILTER (WHERE parked_at IS NOT NULL) FROM {self.table} WHERE published_at IS NULL"
        ) or (0, None, 0)
        self.metrics.parked.labels(self.schema).set(parked)
        self.metrics.backlog.labels(self.schema).set(count)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        self.metrics.oldest_pending_age.labels(self.schema).set(age)

    async def prune(self) -> int:
        """Delete rows published longer ago than the retention period."""
        status = await self.pool.execute(
            f"DELETE FROM {self.table} WHERE published_at < clock_timestamp() - make_interval(secs => $1)",
            self.options.retention_s,
        )
        return int(status.split()[-1])

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; wakes on NOTIFY, polls as a fallback, prunes periodically."""
        listener = await self.pool.acquire()
        last_prune = last_observed = 0.0
        try:  # from here on the listener goes back to the pool whatever happens
            await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
            while not stop.is_set():
                self._wake.clear()
                # the backlog gauges at most once a second: under load a pass runs per commit
                observe = time.monotonic() - last_observed >= GAUGE_INTERVAL_S
                published = await self.publish_pending(observe=observe)
                if observe:
                    last_observed = time.monotonic()
                if time.monotonic() - last_prune > self.options.prune_interval_s:
                    await self.prune()
                    last_prune = time.monotonic()
                if published:
                    continue  # more may be waiting: go again without sleeping
                waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
                _, pending = await asyncio.wait(
                    waiters, timeout=self.options.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self.publish_pending()  # flush: what was staged before the stop goes out now
        finally:
            await self._unlisten(listener)

    async def _unlisten(self, listener: Any) -> None:
        """Stop listening and give the connection back; if PostgreSQL went away, the pool has
        already taken the dead connection back and there is nothing to undo."""
        with contextlib.suppress(asyncpg.InterfaceError):  # the connection is gone
            await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
        with contextlib.suppress(asyncpg.InterfaceError):  # already back in the pool
            await self.pool.release(listener)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.schema:
            self._wake.set()


def _dropped(row: asyncpg.Record) -> asyncio.Future[Any]:
    """An acknowledgement for a record never sent (the `relay.drop` defect)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(RecordMetadata(row["topic"], 0, TopicPartition(row["topic"], 0), -1, -1, -1, -1))
    return future


def _record(row: asyncpg.Record) -> Record:
    headers = [(name, value.encode()) for name, value in json.loads(row["headers"])]
    return Record(bytes(row["key"]), bytes(row["value"]), headers)
