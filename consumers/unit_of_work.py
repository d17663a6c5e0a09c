"""Applying a partition's batch of records to PostgreSQL effectively once.

One transaction covers the batch (throughput). The fast path claims every inbox row in one
statement and runs the handlers; if any message fails, that transaction is rolled back and
the batch is redone carefully: each message in its own savepoint, so a failing message rolls
back only itself. Either way a message's inbox row, its state changes and its outbox rows
commit together, and a duplicate finds its inbox row and changes nothing.

- A transient failure inside a savepoint is retried in process (tenacity, exponential
  backoff with jitter, bounded); still failing, the message is routed to the retry lane.
  In-process retries stop once the careful path has run `careful_window_s`: a dependency
  that is down would otherwise hold a big batch (and every message behind it) for the
  number of its failing messages times their backoff; later messages get one attempt each
  and go to the retry lane, where they wait without holding anything.
- A failure that breaks the transaction itself (connection lost) retries the whole batch;
  when that budget runs out too, every message of the batch goes to the retry lane.
- A permanent failure (undecodable, invalid, a handler bug) goes to the dead-letter lane.
- Nothing a record carries escapes as an exception: `triage` turns any failure to read it
  (unusable lane headers, undecodable bytes) into a dead letter, and a permanent failure
  that breaks a whole batch is isolated by applying the batch's messages one by one.

Every handler call runs in a `process {topic}` span (consumers.tracing), so a message redone
on the careful path shows as two attempts in its trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, NamedTuple

import asyncpg
from opentelemetry.trace import Span
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from consumers.errors import classify
from consumers.handlers import HandlerContext, Handlers, lock_keys
from consumers.inbox import Inbox, TableInbox
from consumers.lanes import Failure, Lanes, Origin, origin_of
from consumers.logcontext import about_message
from consumers.tracing import Delivery, process_span, process_spans
from producers import failpoints, outbox
from producers.db import DbConnection, Statement, execute, together
from schemas.codec import decode_value, read_attributes
from schemas.envelope import Envelope
from schemas.messages import Message
from schemas.topics import TopicMap

log = logging.getLogger(__name__)

OutcomeKind = Literal["applied", "duplicate", "ignored", "retry", "dead_letter"]


class InboundRecord(NamedTuple):
    """What the runtime needs of a Kafka record (a tuple: built for every record fetched)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass
class Outcome:
    record: InboundRecord
    kind: OutcomeKind
    origin: Origin
    envelope: Envelope[Message] | None = None
    failure: Failure | None = None
    emitted: list[Envelope[Message]] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)  # see HandlerContext


@dataclass(frozen=True)
class RetryBudget:
    message_attempts: int = 3
    batch_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    careful_window_s: float = 2.0  # in-process retries on a batch's careful path stop after this


class UnitOfWork:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        schema: str,
        group: str,
        source: str,
        handlers: Handlers,
        topics: TopicMap,
        budget: RetryBudget | None = None,
        transaction_per_message: bool = False,
        lanes: Lanes | None = None,
        dispatch: outbox.Dispatch | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        """`transaction_per_message` trades throughput for short lock holds: services whose
        messages contend for hot rows (accounts, stock) commit each message on its own, so
        no transaction holds the locks of several messages and waits on another's. `lanes`
        (default: the group's with the default delays) says which topics are retry lanes.
        `dispatch`: the relay of this process, which then sends what a unit staged right
        after its commit where per-key order allows (producers.outbox.stage_many). `inbox`:
        where the group's applied events are claimed (default: the schema's inbox table)."""
        self.pool = pool
        self.lanes = lanes or Lanes(group)
        self.transaction_per_message = transaction_per_message
        self.schema = schema
        self.group = group
        self.source = source
        self.handlers = handlers
        self.topics = topics
        self.budget = budget or RetryBudget()
        self.dispatch = dispatch
        self.inbox = inbox or TableInbox(schema, group)

    def _backoff(self) -> wait_exponential_jitter:
        b = self.budget
        return wait_exponential_jitter(
            multiplier=b.initial_backoff_s, max=b.max_backoff_s, jitter=b.initial_backoff_s
        )

    async def process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        """Outcomes in record order; `applied`/`duplicate` ones are committed on return."""
        outcomes = [triage(record, self.lanes, self.handlers) for record in records]
        todo = [o for o in outcomes if o.kind == "applied"]  # decoded, handled: to apply
        if self.transaction_per_message:
            for outcome in todo:
                await self._apply_batch([outcome])
        elif todo:
            await self._apply_batch(todo)
        for outcome in outcomes:
            if outcome.kind == "applied":  # committed: the last attempt's hooks, exactly once
                for hook in outcome.after_commit:
                    try:
                        hook()
                    except Exception:
                        log.exception("%s: an after-commit hook failed", self.group)
        return outcomes

    async def _apply_batch(self, todo: list[Outcome]) -> None:
        keys = self._keys(todo)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: classify(e) == "transient"),
                stop=stop_after_attempt(self.budget.batch_attempts),
                wait=self._backoff(),
                reraise=True,
            ):
                with attempt:
                    async with self.pool.acquire() as conn:
                        if await self._apply_fast(conn, todo, keys):
                            return
                        async with conn.transaction():
                            # the same locks as the fast path's claim, in one global order: two
                            # batches touching the same keys can never deadlock, whichever
                            # topics their messages came from
                            await lock_keys(conn, self.schema, keys)
                            until = time.monotonic() + self.budget.careful_window_s
                            for outcome in todo:
                                tries = self.budget.message_attempts if time.monotonic() < until else 1
                                await self._apply_one(conn, outcome, keys, tries)
        except Exception as exc:
            failure = _failure(exc)
            if failure.failure_class == "transient":
                log.warning(
                    "%s: batch of %d failed transiently (%s); routing to the retry lane",
                    self.group,
                    len(todo),
                    type(exc).__name__,
                )
                for outcome in todo:
                    outcome.kind, outcome.failure, outcome.emitted = "retry", failure, []
            elif len(todo) > 1:  # one message broke the batch itself: find it by going one by one
                for outcome in todo:
                    await self._apply_batch([outcome])
            else:
                todo[0].kind, todo[0].failure, todo[0].emitted = "dead_letter", failure, []

    async def _apply_fast(self, conn: DbConnection, todo: list[Outcome], keys: frozenset[str]) -> bool:
        """The whole batch in one go; False (everything rolled back) if any message failed."""
        try:
            async with conn.transaction():
                # the batch's key locks (`_keys`), then its inbox rows: one round trip
                claimed = await self.inbox.claim(
                    conn, [(o.envelope, o.origin.topic) for o in todo if o.envelope], lock=keys
                )
                fresh: list[Outcome] = []
                for outcome in todo:
                    assert outcome.envelope is not None
                    if outcome.envelope.id not in claimed:
                        outcome.kind, outcome.emitted = "duplicate", []
                        continue
                    claimed.discard(outcome.envelope.id)  # a second copy in the same batch is a duplicate
                    fresh.append(outcome)
                await self._run(conn, fresh, held=keys)
            return True
        except Exception as exc:
            if conn.is_closed():
                raise  # the connection is gone: retry the batch
            log.debug("%s: batch fast path failed (%r); applying message by message", self.group, exc)
            return False

    async def _apply_one(
        self, conn: DbConnection, outcome: Outcome, held: frozenset[str], attempts: int
    ) -> None:
        envelope = outcome.envelope
        assert envelope is not None
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: classify(e) == "transient" and not conn.is_closed()),
                stop=stop_after_attempt(attempts),
                wait=self._backoff(),
                reraise=True,
            ):
                with attempt:
                    async with conn.transaction():  # a savepoint inside the batch transaction
                        if not await self.inbox.claim(conn, [(envelope, outcome.origin.topic)]):
                            outcome.kind, outcome.emitted = "duplicate", []
                            return
                        await self._run(conn, [outcome], held=held)
        except Exception as exc:
            if conn.is_closed():
                raise  # the batch transaction is gone: retry the batch
            failure = _failure(exc)
            outcome.kind = "retry" if failure.failure_class == "transient" else "dead_letter"
            outcome.failure, outcome.emitted = failure, []

    async def _run(self, conn: DbConnection, todo: list[Outcome], *, held: frozenset[str]) -> None:
        """Apply claimed messages in record order — a run of consecutive messages that share a
        batch handler in one call of it — then stage everything they emitted in one statement,
        with the writes the last handler deferred.
        Sets each outcome `applied` with what it emitted; raises if any handler failed (the
        caller's transaction or savepoint then rolls back all of them)."""
        deferred: list[Statement] = []  # the handlers' queued writes (HandlerContext.defer)
        contexts = [
            HandlerContext(
                conn,
                self.schema,
                self.group,
                self.source,
                self.topics,
                o.envelope,
                held=held,
                deferred=deferred,
            )
            for o in todo
            if o.envelope is not None
        ]
        i = 0
        while i < len(contexts):
            if deferred:  # what earlier handlers queued, before this one reads
                await execute(conn, together(deferred))
                deferred.clear()
            message_type = type(contexts[i].envelope.data)
            batch = self.handlers.batch_for(message_type)
            if batch is None:
                handler = self.handlers.get(message_type)
                assert handler is not None
                with self._span(todo[i]), self._about(todo[i]):
                    try:
                        _handler_failpoint(contexts[i].envelope)
                        await handler(contexts[i], contexts[i].envelope.data)
                    except Exception as exc:  # in its span: the line carries the span's ids
                        # the type only: an exception's text may hold payload values
                        name = message_type.__name__
                        log.info("%s: handling %s raised %s", self.group, name, _type_name(exc))
                        raise
                i += 1
                continue
            end = i + 1
            while end < len(contexts) and self.handlers.batch_for(type(contexts[end].envelope.data)) is batch:
                end += 1
            run = contexts[i:end]
            deliveries = [
                Delivery(c.envelope, o.record.topic, o.record.partition, o.record.offset)
                for c, o in zip(run, todo[i:end], strict=True)
            ]
            with process_spans(deliveries, group=self.group) as traces:
                for ctx, trace in zip(run, traces, strict=True):
                    ctx.trace = trace
                    _handler_failpoint(ctx.envelope)
                await batch(run)
            i = end
        emitted = [e for c in contexts for e in c.emitted]
        staged = await outbox.stage_many(
            conn, self.schema, emitted, self.topics, along=deferred, dispatch=self.dispatch
        )
        if staged and self.dispatch is not None:  # handed over once this transaction commits
            contexts[-1].after_commit.append(partial(self.dispatch.hand, staged))
        for outcome, ctx in zip(todo, contexts, strict=True):
            outcome.kind, outcome.emitted, outcome.failure = "applied", ctx.emitted, None
            outcome.after_commit = ctx.after_commit

    def _keys(self, todo: list[Outcome]) -> frozenset[str]:
        """What the batch locks up front: each message's subject, and the keys its handler
        declared (`Handlers.register_batch`'s `locks`)."""
        keys: set[str] = set()
        for outcome in todo:
            if outcome.envelope is not None:
                keys.add(outcome.envelope.subject)
                keys.update(self.handlers.lock_keys(outcome.envelope.data))
        return frozenset(keys)

    def _about(self, outcome: Outcome) -> AbstractContextManager[None]:
        """Log lines written while this message is handled are about it (consumers.logcontext)."""
        record = outcome.record
        return about_message(
            group=self.group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            envelope=outcome.envelope,
        )

    def _span(self, outcome: Outcome) -> AbstractContextManager[Span]:
        """The handler's processing span (consumers.tracing): one per attempt."""
        assert outcome.envelope is not None
        record = outcome.record
        return process_span(
            outcome.envelope,
            group=self.group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )


def triage(record: InboundRecord, lanes: Lanes, handlers: Handlers) -> Outcome:
    """What can be decided about a record before the database: a dead letter (its lane
    headers or bytes cannot be used), ignored (no handler for its type) or to be applied.
    The type comes from the headers: the value of a record the group ignores is not read
    (the groups that handle its type decode it, and dead-letter it if it is malformed).
    Never raises, whatever the record's key, value and headers."""
    try:
        origin = origin_of(
            record.headers, record.topic, record.partition, record.offset, record.timestamp, lanes
        )
        attributes = read_attributes(record.headers)
        if not handlers.handles(attributes.cls):
            return Outcome(record, "ignored", origin)
        envelope = decode_value(attributes, record.value)
    except Exception as exc:  # the trust boundary: any failure to read a record is its own
        own = Origin(record.topic, record.partition, record.offset, record.timestamp, "CREATE_TIME", 0, None)
        return Outcome(record, "dead_letter", own, failure=_failure(exc))
    return Outcome(record, "applied", origin, envelope)


def _type_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _handler_failpoint(envelope: Envelope[Message]) -> None:
    if failpoints.any_armed():
        failpoints.hit(f"handler.{type(envelope.data).__name__}")


def _failure(exc: BaseException) -> Failure:
    return Failure(exc=exc, failure_class=classify(exc), at=datetime.now(UTC))
