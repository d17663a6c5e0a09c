"""The worker: one consumer group's loop over its topics and its retry lanes.

Fetch a batch, apply all of it — every partition's records, in order within a partition —
as one unit of work, route failures to the retry or dead-letter lane, then commit the
offsets — only after the database transaction committed and the lane records were
acknowledged. Offsets of applied units are committed together at most `commit_interval_s`
apart (an offset commit is a round trip to the broker that a small unit of work would
otherwise pay every time), and at once when a poll comes back empty; what a crash leaves
uncommitted is delivered again and dropped by the inbox. While records arrive fast enough,
fetches linger on the broker so that they pile up into fewer units of work
(consumers.linger). Retry lanes hold a partition
(pause + seek) until its head record is due, without blocking other partitions and without
polling in a hot loop. On revoke, the batch in hand finishes and every applied offset is
committed before the partitions go. On stop, the same: finish, commit, close.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from consumers.diagnostics import Redactor
from consumers.lanes import Lanes, failed_record
from consumers.linger import CpuMeter, FetchWait, Linger
from consumers.logcontext import about_message
from consumers.metrics import ConsumerMetrics
from consumers.unit_of_work import InboundRecord, Outcome, UnitOfWork
from producers import failpoints
from producers.admin import ensure_topics, start_admin
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from schemas.codec import Record
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 1.0
POSITION_TIMEOUT_S = 0.2  # how long the once-a-second check waits for a partition's position
# aiokafka retries a commit for as long as the coordinator is unknown or answers with a
# retriable error, and its coordinator lookup gives up only when the consumer closes: a
# commit still unanswered after this long is stuck, not slow (its request times out in 40 s)
COMMIT_TIMEOUT_S = 60.0
REVOKE_COMMIT_TIMEOUT_S = 10.0  # ... and before partitions go (the consumer may be closing)
CLOSE_TIMEOUT_S = 30.0  # a consumer that has not closed by then is left behind


@dataclass(frozen=True)
class WorkerOptions:
    topics: tuple[str, ...]
    max_records: int = 500
    fetch_timeout_ms: int = 500
    commit_interval_s: float = 0.0  # longest applied offsets wait to be committed (0: every unit)
    # a fetch returns once this much is there, or after `fetch_max_wait_ms`: 1 byte reacts to
    # every record (a saga step); more lets records pile up into fewer, larger units of work
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 500
    # > 0: while records arrive fast enough to pile up, fetches wait up to this long for them
    # (fewer, larger units of work); at lower rates every record is reacted to (consumers.linger)
    linger_ms: int = 0
    linger_bytes: int = 256 * 1024  # the most a lingering fetch waits for (consumers.linger)
    # how busy the machine's CPUs were lately, at most once a second, else None (`CpuMeter`)
    machine_busy: Callable[[float], float | None] | None = None
    failure_backoff_s: float = 1.0
    # an assigned partition without a position this long: ask for fresh metadata (again every
    # as long while it has none). aiokafka's offset lookup retries a broker that no longer leads
    # the partition without refreshing its metadata (the Java client does since KAFKA-9535), so
    # it loops until the next periodic refresh (metadata_max_age_ms: 5 minutes) unless asked
    refresh_metadata_after_s: float = 3.0
    stall_after_s: float = 60.0  # an assigned partition without a position this long: new consumer
    sensitive_fields: tuple[str, ...] = ()  # masked in dead-letter diagnostics and logs
    log_limit: int = 1000  # characters of exception text in one log line


class Worker:
    def __init__(
        self,
        kafka: KafkaConnection,
        uow: UnitOfWork,
        publisher: Publisher,
        lanes: Lanes,
        options: WorkerOptions,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.uow = uow
        self.publisher = publisher
        self.lanes = lanes
        self.options = options
        self.metrics = metrics
        self.group = lanes.group
        self.redact = Redactor(options.sensitive_fields)
        self._consumer: AIOKafkaConsumer | None = None
        self._batch_lock = asyncio.Lock()
        self._resume_at: dict[TopicPartition, asyncio.TimerHandle] = {}
        self._applied: dict[TopicPartition, int] = {}  # next offsets applied, not yet committed
        self._committed_at = 0.0
        self.running = False
        if metrics:  # every series at 0 from the start: a rate or an alert sees the first event
            metrics.duplicates.labels(self.group)
            metrics.lingering.labels(self.group).set(0)
            for failure_class in ("transient", "permanent"):
                metrics.dead_lettered.labels(self.group, failure_class)
            for lane in range(1, len(lanes.delays_s) + 1):
                metrics.retried.labels(self.group, str(lane))
        self._cpu = options.machine_busy or CpuMeter().reading
        self._lag_observed = 0.0
        self._unpositioned: dict[TopicPartition, float] = {}  # since when each has had no position
        self._metadata_refreshed = 0.0  # when _observe_positions last asked for fresh metadata

    @property
    def ready(self) -> bool:
        return self.running and self._consumer is not None and bool(self._consumer.assignment())

    async def ensure_lanes(self) -> None:
        """Create the group's retry and dead-letter topics, as wide as its widest source,
        unless they exist: then nothing is created or checked, so a worker needs no right to
        create topics where an admin step made them (the least-privilege deployment)."""
        lanes = [*self.lanes.retry_topics, self.lanes.dlt]
        admin = await start_admin(self.kafka)
        try:
            described = await admin.describe_topics([*self.options.topics, *lanes])
        finally:
            await admin.close()
        partitions = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
        if all(partitions.get(lane) for lane in lanes):
            return
        widest = max((partitions.get(topic, 0) for topic in self.options.topics), default=0) or 1
        await ensure_topics(self.kafka, [TopicSpec(name, partitions=widest) for name in lanes])

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.options.max_records,
            fetch_min_bytes=self.options.fetch_min_bytes,
            fetch_max_wait_ms=self.options.fetch_max_wait_ms,
        )
        consumer.subscribe([*self.options.topics, *self.lanes.retry_topics], listener=_Rebalance(self))
        await consumer.start()
        self._consumer = consumer
        self._committed_at = time.monotonic()
        self._unpositioned = {}
        self._metadata_refreshed = 0.0
        linger = self._linger(consumer)
        self.running = True
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                options = self.options
                fetch = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=options.fetch_timeout_ms, max_records=options.max_records)
                )
                await asyncio.wait((fetch, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():  # stopped while waiting for records: nothing is in hand
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    break
                batch = fetch.result()
                if linger is not None:
                    now = time.monotonic()
                    change = linger.observe(now, *_records_and_bytes(batch), self._cpu(now))
                    if change is not None:
                        _set_fetch_wait(consumer, change)
                        if self.metrics:
                            self.metrics.lingering.labels(self.group).set(int(linger.lingering))
                            self.metrics.fetch_min_bytes.labels(self.group).set(change.min_bytes)
                if batch:
                    await self._handle_batch(consumer, batch)
                else:
                    await self._commit_applied(consumer)
                await self._observe_positions(consumer)
            async with self._batch_lock:
                await self._commit_applied(consumer)
        finally:
            stopping.cancel()
            self.running = False
            for handle in self._resume_at.values():
                handle.cancel()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await consumer.stop()
            except TimeoutError:  # the group expels it after the session timeout
                log.error("%s: the consumer did not close in %.0fs; left behind", self.group, CLOSE_TIMEOUT_S)
            self._consumer = None

    def _linger(self, consumer: AIOKafkaConsumer) -> Linger | None:
        """A new consumer's fetches start out as configured: reacting to every record when
        the linger is on."""
        if self.metrics:
            self.metrics.lingering.labels(self.group).set(0)
            self.metrics.fetch_min_bytes.labels(self.group).set(self.options.fetch_min_bytes)
        if self.options.linger_ms <= 0:
            return None
        if not _can_set_fetch_wait(consumer):
            log.warning("%s: this aiokafka cannot change a fetch's wait; linger off", self.group)
            return None
        idle = FetchWait(self.options.fetch_min_bytes, self.options.fetch_max_wait_ms)
        return Linger(self.options.linger_ms, batch_bytes=self.options.linger_bytes, idle=idle)

    async def _handle_batch(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        """Apply everything one poll returned — every partition's due records, in order within
        each partition — as one unit of work (one transaction when nothing fails), route its
        failures, then commit every partition's offsets. A failure that escapes (the retry or
        dead-letter lane cannot be written) seeks the partitions back: they are fetched again."""
        failed = False
        async with self._batch_lock:
            due = {tp: self._due_prefix(consumer, tp, records) for tp, records in batch.items()}
            due = {tp: records for tp, records in due.items() if records}
            if not due:
                return
            try:
                await self._process([r for records in due.values() for r in records])
            except Exception as exc:
                failed = True
                log.error(
                    "%s: batch of %d partitions failed, will be fetched again: %s",
                    self.group,
                    len(due),
                    self.redact.describe(exc, self.options.log_limit),
                )
                for tp, records in due.items():
                    consumer.seek(tp, records[0].offset)
            else:
                failpoints.hit("worker.after-commit")  # the database committed, Kafka not yet
                self._applied.update({tp: int(records[-1].offset) + 1 for tp, records in due.items()})
                if time.monotonic() - self._committed_at >= self.options.commit_interval_s:
                    await self._commit_applied(consumer)
        if failed:
            await asyncio.sleep(self.options.failure_backoff_s)  # an outage: do not spin

    async def _commit_applied(self, consumer: AIOKafkaConsumer, timeout_s: float | None = None) -> None:
        """Commit the offsets of everything applied since the last commit (callers hold the
        batch lock, or are the rebalance listener that waits for it). A commit that does not
        return within `timeout_s` (default `COMMIT_TIMEOUT_S`) is stuck: `ConsumerStalled` (the
        loop restarts with a new consumer; what was not committed is delivered again and
        dropped by the inbox)."""
        timeout_s = COMMIT_TIMEOUT_S if timeout_s is None else timeout_s
        self._committed_at = time.monotonic()
        if not self._applied:
            return
        applied, self._applied = self._applied, {}
        try:
            async with asyncio.timeout(timeout_s):  # no task of its own: this is every unit's path
                await consumer.commit(applied)
        except BaseException as exc:
            for tp, offset in applied.items():  # still to commit, unless a later unit moved on
                self._applied.setdefault(tp, offset)
            if isinstance(exc, TimeoutError):
                raise ConsumerStalled(
                    f"{self.group}: an offset commit did not return in {timeout_s:.0f}s;"
                    " restarting the consumer"
                ) from exc
            raise

    async def _process(self, records: list[Any]) -> None:
        started = time.perf_counter()
        inbound = [
            InboundRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, r.headers or ())
            for r in records
        ]
        if self.metrics:
            self.metrics.in_flight.labels(self.group).inc(len(inbound))
        try:
            outcomes = await self.uow.process(inbound)
            await self._route_failures(outcomes)
        finally:
            if self.metrics:
                self.metrics.in_flight.labels(self.group).dec(len(inbound))
        if self.metrics:
            self.metrics.batch_duration.labels(self.group).observe(time.perf_counter() - started)
            # one call per (topic, outcome) of the unit, not per record: a label lookup costs
            # more than the increment
            counts = collections.Counter((outcome.record.topic, outcome.kind) for outcome in outcomes)
            for (topic, kind), count in counts.items():
                self.metrics.processed.labels(self.group, topic, kind).inc(count)
                if kind == "duplicate":
                    self.metrics.duplicates.labels(self.group).inc(count)

    def _due_prefix(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """On a retry lane: the records already due. The partition is paused at the first one
        not yet due and resumed when it is (`Lanes.due_at`)."""
        if self.lanes.retry_index(tp.topic) is None:
            return records
        now_ms = time.time() * 1000
        for i, record in enumerate(records):
            due = self.lanes.due_at(tp.topic, list(record.headers or ()), now_ms)
            if due > now_ms:
                consumer.seek(tp, record.offset)
                consumer.pause(tp)
                self._schedule_resume(consumer, tp, (due - now_ms) / 1000)
                return records[:i]
        return records

    def _schedule_resume(self, consumer: AIOKafkaConsumer, tp: TopicPartition, delay_s: float) -> None:
        if tp in self._resume_at:
            self._resume_at[tp].cancel()

        def resume() -> None:
            self._resume_at.pop(tp, None)
            if tp in consumer.assignment():
                consumer.resume(tp)

        self._resume_at[tp] = asyncio.get_running_loop().call_later(max(delay_s, 0.0), resume)

    async def _route_failures(self, outcomes: list[Outcome]) -> None:
        """Send retry and dead-letter records; wait for every acknowledgement."""
        sends: list[tuple[str, Record, str]] = []
        for outcome in outcomes:
            if outcome.kind not in ("retry", "dead_letter") or outcome.failure is None:
                continue
            record = outcome.record
            current = self.lanes.retry_index(record.topic) or 0
            next_lane = current + 1
            saga_id = outcome.envelope.saga_id if outcome.envelope else None
            event_id = (
                outcome.envelope.id
                if outcome.envelope
                else f"{record.topic}:{record.partition}:{record.offset}"
            )
            to_retry = outcome.kind == "retry" and next_lane <= len(self.lanes.delays_s)
            due = None
            if to_retry:
                due = int((outcome.failure.at.timestamp() + self.lanes.delays_s[next_lane - 1]) * 1000)
            lane_record = failed_record(
                record.key,
                record.value,
                list(record.headers),
                origin=outcome.origin,
                group=self.group,
                failure=outcome.failure,
                saga_id=saga_id,
                lane="retry" if to_retry else "dlt",
                due_ms=due,
                redact=self.redact,
            )
            sends.append(
                (self.lanes.retry_topic(next_lane) if to_retry else self.lanes.dlt, lane_record, event_id)
            )
            if self.metrics and to_retry:
                self.metrics.retried.labels(self.group, str(next_lane)).inc()
            elif self.metrics:
                self.metrics.dead_lettered.labels(self.group, outcome.failure.failure_class).inc()
            if not to_retry:
                about = about_message(
                    group=self.group,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    envelope=outcome.envelope,
                )
                with about:
                    log.warning(
                        "%s: dead-lettered %s[%d]@%d: %s",
                        self.group,
                        record.topic,
                        record.partition,
                        record.offset,
                        self.redact.describe(outcome.failure.exc, self.options.log_limit),
                    )
        futures = [(await self.publisher.enqueue(topic, rec), topic, eid) for topic, rec, eid in sends]
        for future, topic, eid in futures:
            await Publisher.acknowledged(future, topic, eid)

    async def _observe_positions(self, consumer: AIOKafkaConsumer) -> None:
        """Once a second: refresh the lag gauges, and notice a consumer that cannot find where
        to read. A partition has no position until the group's committed offset (or the reset
        to the earliest) is known; aiokafka looks it up in the background and retries for as
        long as it fails — after a broker pause (chaos S7) it asked a broker that had stopped
        leading the partition, every 100 ms, and never refreshed its metadata to find the new
        leader. So a partition without a position for `refresh_metadata_after_s` asks for fresh
        metadata (`_refresh_metadata`), and one without a position for `stall_after_s` ends this
        run of the loop with `ConsumerStalled`: the supervisor starts a new consumer (fresh
        metadata, a fresh join) after its backoff."""
        now = time.monotonic()
        if now - self._lag_observed < LAG_INTERVAL_S:
            return
        self._lag_observed = now
        assigned = list(consumer.assignment())
        lookups = {tp: asyncio.ensure_future(consumer.position(tp)) for tp in assigned}
        if lookups:  # a valid position comes back at once; a missing one within the timeout or never
            await asyncio.wait(lookups.values(), timeout=POSITION_TIMEOUT_S)
        missing: list[TopicPartition] = []
        for tp, lookup in lookups.items():
            if not lookup.done():
                lookup.cancel()
                missing.append(tp)
            elif lookup.exception() is not None:  # unassigned meanwhile: a rebalance, not a stall
                pass
            elif self.metrics and (highwater := consumer.highwater(tp)) is not None:
                lag = max(highwater - lookup.result(), 0)
                self.metrics.lag.labels(self.group, tp.topic, str(tp.partition)).set(lag)
        self._unpositioned = {tp: self._unpositioned.get(tp, now) for tp in missing}
        refresh_after = self.options.refresh_metadata_after_s
        waiting = self._unpositioned_for(now, refresh_after)
        if waiting and now - self._metadata_refreshed >= refresh_after:
            self._metadata_refreshed = now
            refreshed = _refresh_metadata(consumer)
            log.warning(
                "%s: no position for %s in %.0fs; %s",
                self.group,
                ", ".join(waiting),
                refresh_after,
                "asked for fresh metadata"
                if refreshed
                else "this aiokafka cannot be asked for fresh metadata",
            )
        stalled = self._unpositioned_for(now, self.options.stall_after_s)
        if stalled:
            raise ConsumerStalled(
                f"{self.group}: no position for {', '.join(stalled)} in {self.options.stall_after_s:.0f}s;"
                " restarting the consumer"
            )

    def _unpositioned_for(self, now: float, seconds: float) -> list[str]:
        """The assigned partitions that have had no position for `seconds` or more."""
        return sorted(
            f"{tp.topic}[{tp.partition}]"
            for tp, since in self._unpositioned.items()
            if now - since >= seconds
        )


class ConsumerStalled(TimeoutError):
    """Assigned partitions have had no position for too long: the consumer is stuck (transient:
    the supervisor restarts the worker's loop with a new consumer)."""


def _refresh_metadata(consumer: AIOKafkaConsumer) -> bool:
    """Ask the consumer's client for fresh cluster metadata (in the background: the next
    offset lookup goes to the leader it names). aiokafka has no public call for this, so its
    client's `force_metadata_update` is called (pinned by tests/unit/test_worker_fetch.py);
    False if this aiokafka has none, and the watchdog's restart remains."""
    refresh = getattr(getattr(consumer, "_client", None), "force_metadata_update", None)
    if not callable(refresh):
        return False
    refresh()
    return True


def _records_and_bytes(batch: dict[TopicPartition, list[Any]]) -> tuple[int, int]:
    """The records a poll returned and about the bytes the broker counts for them (keys,
    values and headers; a batch's framing aside): what the linger sizes its fetches by."""
    records = size = 0
    for fetched in batch.values():
        records += len(fetched)
        for record in fetched:
            size += max(record.serialized_key_size, 0) + max(record.serialized_value_size, 0)
            for name, value in record.headers:
                size += len(name) + (len(value) if value else 0)
    return records, size


def _can_set_fetch_wait(consumer: AIOKafkaConsumer) -> bool:
    fetcher = getattr(consumer, "_fetcher", None)
    return all(hasattr(fetcher, name) for name in ("_fetch_min_bytes", "_fetch_max_wait_ms"))


def _set_fetch_wait(consumer: AIOKafkaConsumer, wait: FetchWait) -> None:
    """What the next fetch requests ask the broker to wait for. aiokafka fixes these at
    construction and reads them for every request it builds, so the fetcher's two fields are
    set (pinned by tests/unit/test_worker_fetch.py: an aiokafka that renames them turns linger off
    with a warning, and fails that test)."""
    fetcher: Any = consumer._fetcher
    fetcher._fetch_min_bytes = wait.min_bytes
    fetcher._fetch_max_wait_ms = wait.max_wait_ms


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The batch in hand finishes and every applied offset is committed before the
        # partitions go (a partition's next owner starts from there).
        async with self.worker._batch_lock:
            consumer = self.worker._consumer
            try:
                if consumer is not None:
                    await self.worker._commit_applied(consumer, REVOKE_COMMIT_TIMEOUT_S)
            except Exception as exc:  # the next owner gets them again; the inbox drops them
                log.warning("%s: offsets not committed before a rebalance: %r", self.worker.group, exc)
            for tp in revoked:
                self.worker._applied.pop(tp, None)
                handle = self.worker._resume_at.pop(tp, None)
                if handle:
                    handle.cancel()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info(
            "%s: assigned %s", self.worker.group, sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        )
