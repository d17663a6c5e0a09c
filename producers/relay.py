"""The outbox relay: publishes staged rows in order per key, marks them after the broker's ack.

A relay owns buckets of the outbox: it takes a session advisory lock on every bucket with
pending rows that no other relay holds, and keeps it while its connection lives (so several
relays share an outbox, and a key — always in one bucket — is only ever sent by one of them).
A pass is one statement: mark the rows the last pass got acknowledged, take the free
buckets, read the lowest pending ids of the owned ones; then send them all and wait for the
acknowledgements. The marks ride on the next pass, or go on their own when the relay falls
idle. A crash before the mark re-sends those rows later under the same event ids (in id
order, before anything newer of their keys), which consumers drop as duplicates. Woken by
LISTEN/NOTIFY, with a polling fallback.

Dispatch after commit: a worker in the same process hands the relay the rows it has just
committed (`hand`) when its stage statement found them free to go — their bucket held by
this relay, and every earlier pending row of their keys already acknowledged by it
(`eligibility`); those rows are sent at once, with no NOTIFY and no pass statement. Every
other row (a key with rows still in flight or pending elsewhere, a bucket another relay
holds, a staging without a worker) goes the NOTIFY and pass way, which is also the sweeper
for whatever a crash left behind.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.structs import RecordMetadata, TopicPartition
from opentelemetry.trace import Span, Status, StatusCode
from pydantic_core import from_json

from producers import failpoints
from producers.db import qualified
from producers.errors import DeliveryError
from producers.metrics import RelayMetrics
from producers.outbox import BUCKETS, Staged, notify_channel
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
MARK_DELAY_S = 0.2  # how long acknowledged rows wait for the next pass to mark them
MAX_HANDED = 5000  # rows handed over and not yet sent, beyond which workers stop handing more


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
            metrics.dispatched.labels(schema)
        self.after_send = after_send
        self._lock_class = zlib.crc32(schema.encode()) - 2**31  # an int4 per schema
        self._wake = asyncio.Event()
        self._again = False  # the last pass left rows it could have sent: run the next at once
        self._behind = False  # the last pass was full: a backlog waits (no hand-overs meanwhile)
        self._unmarked: list[int] = []  # acknowledged ids the next statement marks published
        self._unmarked_since = 0.0  # monotonic time of the oldest of them
        self._held: set[int] = set()  # buckets the running relay's connection holds (dispatch)
        self._handed: list[Staged] = []  # rows workers handed over after their commits (dispatch)
        self._pass_wanted = False  # a NOTIFY came: rows wait that only a pass finds
        self._running = False  # `run` holds its connection: rows may be handed over

    async def publish_pending(self, *, observe: bool = True) -> int:
        """One pass on a connection of the pool, marks included, buckets released at the end;
        returns rows published. `observe`: also refresh the backlog gauges (one more query)."""
        async with self.pool.acquire() as conn:
            try:
                published = await self._publish_pass(conn)
                await self._mark(conn)
            finally:
                await _release_buckets(conn)
        if observe:
            await self._observe_backlog()
        return published

    async def _publish_pass(self, conn: Any, *, held: set[int] | None = None) -> int:
        """One statement, whatever the number of buckets: mark what the last pass got
        acknowledged, lock every pending bucket no other relay holds (a bucket this session
        holds already is granted again), read the lowest pending ids among them (for each
        bucket a prefix of its rows, in id order). Then send them all and wait for the
        acknowledgements; the acknowledged prefix of each bucket is marked by the next pass.
        `held` (the running relay's): where the buckets of the rows read are recorded, and
        handed rows the pass read are taken off the hand-over list (sent here, in order).

        Every read goes through `outbox_pending` a bucket at a time: one probe per bucket for
        whether it has a row, then each held bucket's first rows in id order, at most an equal
        share of the batch. So a pass reads about the rows it returns, not every pending
        entry of the outbox (a backlog after an outage drains at the same cost a row, once
        the table has statistics), and meets the entry of a row published since the last
        vacuum once at most (nineteenth step in docs/benchmarks.md). A bucket that filled
        its share may have more: the next pass runs at once."""
        self._again = self._behind = False
        marks = self._unmarked
        in_bucket = (  # bucket b's pending rows (those being marked are pending to this snapshot)
            f"FROM {self.table} WHERE bucket = b.bucket AND published_at IS NULL AND parked_at IS NULL"
            " AND id <> ALL($3::bigint[])"
        )
        rows = await conn.fetch(
            f"WITH marked AS (UPDATE {self.table} SET published_at = clock_timestamp(),"
            "   attempts = attempts + 1 WHERE id = ANY($3::bigint[])),"
            f" pending AS MATERIALIZED (SELECT bucket FROM generate_series(0, {BUCKETS - 1}) AS b(bucket)"
            f"   WHERE EXISTS (SELECT {in_bucket})),"
            " mine AS MATERIALIZED (SELECT bucket FROM pending WHERE pg_try_advisory_lock($1, bucket)),"
            " share AS (SELECT (($2 + count(*) - 1) / greatest(count(*), 1))::int AS n FROM mine)"
            " SELECT r.*, share.n AS share FROM mine AS b, share, LATERAL (SELECT id, bucket,"
            f"   event_id, topic, key, value, headers, created_at {in_bucket} ORDER BY id LIMIT share.n)"
            " AS r ORDER BY r.id LIMIT $2",
            self._lock_class,
            self.options.batch_size,
            marks,
        )
        self._unmarked = []  # committed with the statement
        if not rows:
            return 0
        self._behind = len(rows) >= self.options.batch_size  # a full pass: a backlog waits
        per_bucket = collections.Counter(row["bucket"] for row in rows)
        # or a bucket filled its share of the batch: more of it may wait
        self._again = self._behind or max(per_bucket.values()) >= rows[0]["share"]
        staged = [_staged(row) for row in rows]
        if held is not None:
            held.update(row.bucket for row in staged)
            read = {row.id for row in staged}
            self._handed = [row for row in self._handed if row.id not in read]
        return await self._send(conn, staged)

    async def _send(self, conn: Any, rows: list[Staged]) -> int:
        """Send rows (in id order) and wait for the acknowledgements; the acknowledged ones
        are marked by the next statement. A bucket whose row failed stops there: its later
        rows go again next pass, so per-key order holds; a row the broker refuses for what it
        is is parked so that its bucket moves on. Returns the rows acknowledged."""
        failures: dict[int, tuple[Staged, DeliveryError]] = {}
        failpoints.hit("relay.before-send")
        sent: list[tuple[Staged, asyncio.Future[Any]]] = []
        unsent: dict[int, tuple[Staged, DeliveryError]] = {}
        spans: dict[int, Span] = {}  # row id -> its send span, when tracing records spans
        now = datetime.now(UTC)
        for row in rows:
            if row.bucket in unsent:
                continue  # after a refused send in its bucket: next pass
            if failpoints.enabled("relay.drop") and zlib.crc32(row.event_id.encode()) % 10 == 0:
                sent.append((row, _dropped(row)))  # the defect: marked published, never sent
                continue
            delay = (now - row.created_at).total_seconds()
            span = relay_send_span(
                row.topic, row.record.headers, event_id=row.event_id, key=row.record.key, delay_s=delay
            )
            try:
                sent.append((row, await self.publisher.enqueue(row.topic, row.record)))
            except DeliveryError as exc:
                unsent[row.bucket] = (row, exc)
                _end_span(span, exc)
                continue
            if span is not None:
                spans[row.id] = span
        results = await asyncio.gather(
            *(Publisher.acknowledged(f, r.topic, r.event_id) for r, f in sent),
            return_exceptions=True,
        )
        for (row, _), result in zip(sent, results, strict=True):
            _end_span(spans.pop(row.id, None), result)
        acked: list[Staged] = []
        acks: list[Ack] = []
        for (row, _), result in zip(sent, results, strict=True):
            if row.bucket in failures:
                continue  # after a failure in its bucket: not marked, sent again next pass
            if isinstance(result, BaseException):
                failures[row.bucket] = (
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
        if acked and not self._unmarked:
            self._unmarked_since = time.monotonic()
        self._unmarked.extend(row.id for row in acked)
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
                row.id,
            )
        return len(acked)

    async def _mark(self, conn: Any) -> None:
        """Mark what the last pass got acknowledged, when no pass follows to carry it."""
        if self._unmarked:
            await conn.execute(
                f"UPDATE {self.table} SET published_at = clock_timestamp(), attempts = attempts + 1"
                " WHERE id = ANY($1::bigint[])",
                self._unmarked,
            )
            self._unmarked = []

    async def _park(self, conn: Any, row: Staged, failure: DeliveryError) -> None:
        await conn.execute(
            f"UPDATE {self.table} SET parked_at = clock_timestamp(), park_reason = $2,"
            " attempts = attempts + 1 WHERE id = $1",
            row.id,
            str(failure)[:1000],
        )
        log.error(
            "outbox %s: parked row %d (event %s, topic %s), the broker refuses it: %s",
            self.schema,
            row.id,
            row.event_id,
            row.topic,
            failure,
        )

    def _observe_published(self, rows: list[Staged]) -> None:
        if not self.metrics or not rows:
            return
        now = datetime.now(UTC)
        for topic, count in collections.Counter(row.topic for row in rows).items():
            self.metrics.published.labels(self.schema, topic).inc(count)
        latency = self.metrics.latency.labels(self.schema)
        for row in rows:
            latency.observe((now - row.created_at).total_seconds())

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
        """Delete rows published longer ago than the retention period (a stable cutoff,
        `now()`, so that `outbox_published` finds them)."""
        status = await self.pool.execute(
            f"DELETE FROM {self.table} WHERE published_at < now() - make_interval(secs => $1)",
            self.options.retention_s,
        )
        return int(status.split()[-1])

    def eligibility(self) -> tuple[list[int], list[int]]:
        """What a worker's stage statement needs to tell which of its rows this relay may
        send right after the commit: the buckets the running relay holds, and the ids it got
        acknowledged and has not yet marked (pending in the table, on the broker already).
        Nothing while the relay is not running, or is behind (its last pass was full, or
        `MAX_HANDED` rows wait for it, as when the broker does not answer): every row then
        goes the NOTIFY way and waits in the table, and no stage statement looks for a key's
        earlier rows among a backlog."""
        if not self._running or self._behind or len(self._handed) >= MAX_HANDED:
            return [], []
        return sorted(self._held), list(self._unmarked)

    def hand(self, rows: Sequence[Staged]) -> None:
        """Rows a worker has committed and `eligibility` cleared: the running relay sends them
        on its next turn, with no pass statement. If it cannot (its connection, and with it
        the buckets, changed in between) they wait in the table for a pass."""
        if rows:
            self._handed.extend(rows)
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set: rows handed over at once, a pass when a NOTIFY says
        rows wait that only a pass finds, polls as a fallback, prunes periodically. One
        connection, held throughout: it listens, runs every pass and holds the buckets'
        locks, so this relay keeps its buckets until it stops."""
        conn = await self.pool.acquire()
        last_prune = last_observed = 0.0
        self._held = set()
        pass_due = True  # the first turn sweeps what is pending (and learns its buckets)
        try:  # from here on the connection goes back to the pool whatever happens
            await conn.add_listener(notify_channel(self.schema), self._on_notify)
            self._running = True
            while not stop.is_set():
                self._wake.clear()
                if self._handed:
                    await self._send_handed(conn)
                if pass_due or self._pass_wanted or self._again:
                    self._pass_wanted = False
                    await self._publish_pass(conn, held=self._held)
                elif self._unmarked and time.monotonic() - self._unmarked_since >= MARK_DELAY_S:
                    await self._mark(conn)  # only handed rows keep coming: no pass carries the marks
                pass_due = False
                # the backlog gauges at most once a second: under load a turn runs per commit
                if time.monotonic() - last_observed >= GAUGE_INTERVAL_S:
                    await self._observe_backlog()
                    last_observed = time.monotonic()
                if time.monotonic() - last_prune > self.options.prune_interval_s:
                    await self.prune()
                    last_prune = time.monotonic()
                if self._again or self._handed or self._pass_wanted:
                    continue  # more are waiting: go again without sleeping
                # otherwise wait: rows committed during the turn have set `_wake` (a hand-over
                # or their NOTIFY comes after their commit), so no pass is run just to find
                # nothing; marks wait a moment for the next pass to carry them, then go alone
                if self._unmarked:
                    left = MARK_DELAY_S - (time.monotonic() - self._unmarked_since)
                    if await self._wait(stop, max(left, 0.0)):
                        continue
                    await self._mark(conn)
                pass_due = not await self._wait(stop, self.options.poll_interval_s)
            self._running = False
            await self._publish_pass(conn, held=self._held)  # flush: what was staged goes out now
            await self._mark(conn)
        finally:
            self._running = False
            self._held = set()
            await self._give_back(conn)

    async def _send_handed(self, conn: Any) -> None:
        """Send what workers handed over, but only rows of buckets this connection holds and
        not acknowledged already (a pass may have sent a row before it was handed)."""
        rows, self._handed = self._handed, []
        acked = set(self._unmarked)
        mine = sorted((row for row in rows if row.bucket in self._held and row.id not in acked), key=_id)
        if any(row.bucket not in self._held and row.id not in acked for row in rows):  # wake their relay
            await conn.execute("SELECT pg_notify($1, $2)", notify_channel(self.schema), self.schema)
        if mine:
            sent = await self._send(conn, mine)
            if self.metrics:
                self.metrics.dispatched.labels(self.schema).inc(sent)

    async def _wait(self, stop: asyncio.Event, timeout_s: float) -> bool:
        """Until woken by a NOTIFY or the stop, at most `timeout_s`; True if woken."""
        if self._wake.is_set() or stop.is_set():
            return True
        waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
        done, pending = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return bool(done)

    async def _give_back(self, conn: Any) -> None:
        """Stop listening, let go of the buckets and give the connection back; if PostgreSQL
        went away, the pool has already taken the dead connection back (and the server
        released its locks): there is nothing to undo."""
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError, OSError):
            await conn.remove_listener(notify_channel(self.schema), self._on_notify)
        await _release_buckets(conn)
        with contextlib.suppress(asyncpg.InterfaceError):  # already back in the pool
            await self.pool.release(conn)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.schema:
            self._pass_wanted = True
            self._wake.set()


async def _release_buckets(conn: Any) -> None:
    """Release every bucket lock this session holds (the pool's reset does not). If that
    fails (the connection broke, the task was cancelled), end the session instead: the
    server releases a session's locks when it ends, and a pooled connection must never keep
    holding buckets that other relays wait for. Never raises but a cancellation, so it
    cannot hide the error that brought the caller here."""
    try:
        await conn.execute("SELECT pg_advisory_unlock_all()")
    except BaseException as exc:
        with contextlib.suppress(asyncpg.InterfaceError):  # already back in the pool: closed
            conn.terminate()
        if not isinstance(exc, Exception):
            raise


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


def _dropped(row: Staged) -> asyncio.Future[Any]:
    """An acknowledgement for a record never sent (the `relay.drop` defect)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(RecordMetadata(row.topic, 0, TopicPartition(row.topic, 0), -1, -1, -1, -1))
    return future


def _id(row: Staged) -> int:
    return row.id


def _staged(row: asyncpg.Record) -> Staged:
    headers = [(name, value.encode()) for name, value in from_json(row["headers"])]  # 4x json.loads' speed
    record = Record(bytes(row["key"]), bytes(row["value"]), headers)
    return Staged(row["id"], row["bucket"], row["event_id"], row["topic"], record, row["created_at"])
