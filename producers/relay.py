"""The outbox relay: publishes staged rows in order per key, marks them after the broker's ack.

A pass is one transaction: take the advisory lock of every bucket with pending rows that no
other relay holds (so several relays share an outbox, and a key — always in one bucket — is
only ever sent by one of them at a time), read the lowest pending ids of those buckets,
send them all, wait for the acknowledgements, mark each bucket's acknowledged prefix
published, commit. A constant number of statements per pass, however many buckets are
pending. A crash before the mark re-sends those rows later under the same event id, which
consumers drop as duplicates. Woken by LISTEN/NOTIFY, with a polling fallback.
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
from opentelemetry.trace import Span, Status, StatusCode

from producers import failpoints
from producers.db import qualified
from producers.errors import DeliveryError
from producers.metrics import RelayMetrics
from producers.outbox import NOTIFY_CHANNEL
from producers.publisher import Ack, Publisher
from producers.tracing import relay_send_span
from schemas.codec import Record

log = logging.getLogger(__name__)

AfterSend = Callable[[list[Ack]], Awaitable[None]]


@dataclass(frozen=True)
class RelayOptions:
    batch_size: int = 500  # rows per pass (one transaction)
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
        if metrics:  # at 0 from the start: a rate or an alert sees the first failure
            metrics.publish_failures.labels(schema)
        self.after_send = after_send
        self._lock_class = zlib.crc32(schema.encode()) - 2**31  # an int4 per schema
        self._wake = asyncio.Event()
        self._again = False  # the last pass left rows it could have sent: run the next at once

    async def publish_pending(self, *, observe: bool = True) -> int:
        """One pass over the buckets with pending rows that no other relay holds; returns rows
        published. `observe`: also refresh the backlog gauges (one more query)."""
        published = await self._publish_pass()
        if observe:
            await self._observe_backlog()
        return published

    async def _publish_pass(self) -> int:
        """One transaction, whatever the number of buckets: lock every pending bucket no other
        relay holds and read the lowest pending ids among them (for each bucket a prefix of
        its rows, in id order), send them all, wait for the acknowledgements, mark per bucket
        the acknowledged prefix. A bucket whose row failed stops there: its later rows go
        again next pass, so per-key order holds; a row the broker refuses for what it is is
        parked so that its bucket moves on."""
        failures: dict[int, tuple[asyncpg.Record, DeliveryError]] = {}
        self._again = False
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"WITH mine AS MATERIALIZED (SELECT bucket FROM (SELECT DISTINCT bucket FROM {self.table}"
                "   WHERE published_at IS NULL AND parked_at IS NULL) AS pending"
                "   WHERE pg_try_advisory_xact_lock($1, bucket))"
                f" SELECT id, bucket, event_id, topic, key, value, headers, created_at FROM {self.table}"
                " WHERE bucket IN (SELECT bucket FROM mine) AND published_at IS NULL AND parked_at IS NULL"
                " ORDER BY id LIMIT $2",
                self._lock_class,
                self.options.batch_size,
            )
            if not rows:
                return 0
            self._again = len(rows) >= self.options.batch_size  # a full pass: more may wait
            failpoints.hit("relay.before-send")
            sent: list[tuple[asyncpg.Record, asyncio.Future[Any]]] = []
            unsent: dict[int, tuple[asyncpg.Record, DeliveryError]] = {}
            spans: dict[int, Span] = {}  # row id -> its send span, when tracing records spans
            now = datetime.now(UTC)
            for row in rows:
                if row["bucket"] in unsent:
                    continue  # after a refused send in its bucket: next pass
                if failpoints.enabled("relay.drop") and zlib.crc32(row["event_id"].encode()) % 10 == 0:
                    sent.append((row, _dropped(row)))  # the defect: marked published, never sent
                    continue
                record = _record(row)
                delay = (now - row["created_at"]).total_seconds()
                span = relay_send_span(
                    row["topic"], record.headers, event_id=row["event_id"], key=record.key, delay_s=delay
                )
                try:
                    sent.append((row, await self.publisher.enqueue(row["topic"], record)))
                except DeliveryError as exc:
                    unsent[row["bucket"]] = (row, exc)
                    _end_span(span, exc)
                    continue
                if span is not None:
                    spans[row["id"]] = span
            results = await asyncio.gather(
                *(Publisher.acknowledged(f, r["topic"], r["event_id"]) for r, f in sent),
                return_exceptions=True,
            )
            for (row, _), result in zip(sent, results, strict=True):
                _end_span(spans.pop(row["id"], None), result)
            acked: list[asyncpg.Record] = []
            acks: list[Ack] = []
            for (row, _), result in zip(sent, results, strict=True):
                if row["bucket"] in failures:
                    continue  # after a failure in its bucket: not marked, sent again next pass
                if isinstance(result, BaseException):
                    failures[row["bucket"]] = (
                        row,
                        result
                        if isinstance(result, DeliveryError)
                        else DeliveryError(repr(result), outcome_unknown=True),
                    )
                    continue
                acked.append(row)
                acks.append(result)
            for bucket, refused in unsent.items():  # its sent rows came before it
                failures.setdefault(bucket, refused)
            if self.after_send is not None:
                await self.after_send(acks)
            failpoints.hit("relay.after-send")  # acknowledged, not yet marked published
            if acked:
                await conn.execute(
                    f"UPDATE {self.table} SET published_at = clock_timestamp(), attempts = attempts + 1"
                    " WHERE id = ANY($1::bigint[])",
                    [row["id"] for row in acked],
                )
            for bucket, (row, failure) in sorted(failures.items()):
                if failure.record_refused:
                    await self._park(conn, row, failure)
                    del failures[bucket]  # the rest of the bucket goes on at once
                    self._again = True
        self._observe_published(acked)
        for bucket, (row, failure) in sorted(failures.items()):
            if self.metrics:
                self.metrics.publish_failures.labels(self.schema).inc()
            log.warning(
                "outbox %s bucket %d: %s; row %d and the bucket's later rows retried next pass",
                self.schema,
                bucket,
                failure,
                row["id"],
            )
        return len(acked)

    async def _park(self, conn: Any, row: asyncpg.Record, failure: DeliveryError) -> None:
        await conn.execute(
            f"UPDATE {self.table} SET parked_at = clock_timestamp(), park_reason = $2,"
            " attempts = attempts + 1 WHERE id = $1",
            row["id"],
            str(failure)[:1000],
        )
        log.error(
            "outbox %s: parked row %d (event %s, topic %s), the broker refuses it: %s",
            self.schema,
            row["id"],
            row["event_id"],
            row["topic"],
            failure,
        )

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
                await self.publish_pending(observe=observe)
                if observe:
                    last_observed = time.monotonic()
                if time.monotonic() - last_prune > self.options.prune_interval_s:
                    await self.prune()
                    last_prune = time.monotonic()
                if self._again:
                    continue  # more are waiting: go again without sleeping
                # otherwise wait: rows committed during the pass have set `_wake` (their NOTIFY
                # comes after their commit), so no pass is run just to find nothing
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


def _end_span(span: Span | None, result: object) -> None:
    """End a send span with the broker's answer: where the record went, or the error."""
    if span is None:
        return
    if isinstance(result, BaseException):
        span.record_exception(result)
        span.set_status(Status(StatusCode.ERROR, type(result).__name__))
    elif isinstance(result, Ack):
        span.set_attribute("messaging.destination.partition.id", str(result.partition))
        span.set_attribute("messaging.kafka.offset", result.offset)
    span.end()


def _dropped(row: asyncpg.Record) -> asyncio.Future[Any]:
    """An acknowledgement for a record never sent (the `relay.drop` defect)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(RecordMetadata(row["topic"], 0, TopicPartition(row["topic"], 0), -1, -1, -1, -1))
    return future


def _record(row: asyncpg.Record) -> Record:
    headers = [(name, value.encode()) for name, value in json.loads(row["headers"])]
    return Record(bytes(row["key"]), bytes(row["value"]), headers)
