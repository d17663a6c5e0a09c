"""Handlers and their registry, registered explicitly by message type.

Two shapes, one registry:
- a **handler** `async (ctx, message)` applies one message;
- a **batch handler** `async (contexts)` applies a run of messages at once, in record order
  (`ctx.envelope` is each message): it loads the state the run needs in one query, decides
  in plain Python, and saves in one statement — the participant pattern that keeps a batch's
  round trips constant however many messages it holds.

Either way what a message emits is staged by the unit of work, in one statement per
transaction, with the message's inbox row and its state change; a handler's last writes can
ride in that statement too (`HandlerContext.defer`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from producers import failpoints
from producers.db import DbConnection, Statement
from producers.tracing import current_trace_context
from schemas.envelope import Envelope
from schemas.messages import Message
from schemas.topics import TopicMap

TraceContext = tuple[str | None, str | None]


@dataclass
class HandlerContext:
    """What a handler may touch: the open transaction (state, inbox and outbox commit
    together) and `emit` to stage events caused by the message being handled."""

    conn: DbConnection
    schema: str
    group: str
    source: str
    topics: TopicMap
    envelope: Envelope[Message]
    emitted: list[Envelope[Message]] = field(default_factory=list)
    # the processing span's (traceparent, tracestate) when that span is not the current one
    # (a batch handler runs one call for many messages, each with its own span)
    trace: TraceContext | None = None
    # keys whose lock this transaction took already (the unit of work locks each message's
    # subject up front): locking them again would be a round trip for nothing
    held: frozenset[str] = frozenset()
    # run once the transaction that applied this message has committed (metrics about what
    # it did); dropped if it rolls back, and never run for a duplicate
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # writes queued by `defer`: one list shared by every context of the transaction
    deferred: list[Statement] = field(default_factory=list)

    def defer(self, sql: str, *args: Any) -> None:
        """Queue a data-modifying statement (INSERT, UPDATE or DELETE; parameters from $1) to
        run in this transaction, sent with the unit's outbox rows in one round trip. It runs
        before the next handler of the unit is called or, at the latest, before the commit;
        until then no read sees it, so defer only a handler's last writes, ones that neither
        depend on each other nor touch the same rows (`producers.db.together`)."""
        self.deferred.append((sql, args))

    async def lock(self, *keys: str) -> None:
        """Serialise work on `keys` (e.g. an order id) until this transaction ends: two messages
        about the same thing from different topics or lanes never interleave. Several keys are
        locked in one statement, in one global order (so two such calls cannot deadlock)."""
        await lock_keys(self.conn, self.schema, [key for key in keys if key not in self.held])

    async def emit(self, message: Message) -> Envelope[Message]:
        """Stage `message`, caused by the message being handled and carrying its processing
        span's trace context. The unit of work writes it to the outbox before the commit."""
        traceparent, tracestate = self.trace or current_trace_context()
        copies = 2 if failpoints.enabled("emit.twice") else 1  # a negative control's defect
        for _ in range(copies):
            envelope: Envelope[Message] = Envelope.new(
                message, self.source, caused_by=self.envelope, traceparent=traceparent, tracestate=tracestate
            )
            self.emitted.append(envelope)
        return envelope


def lock_keys_sql(scope: str, keys: str) -> str:
    """A query taking advisory transaction locks on the keys in the text array `keys`, scoped
    by the text `scope` (both SQL expressions, e.g. parameters), in one global order:
    transactions that lock overlapping sets this way never deadlock. Its one value is the
    number of locks taken. The only spelling of the lock: `lock_keys` and the unit of work's
    claim statement both use it, so they take the same locks."""
    return (
        "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT"
        f" hashtext({scope} || ':' || k) AS h FROM unnest({keys}::text[]) AS k ORDER BY h) AS s"
    )


async def lock_keys(conn: DbConnection, schema: str, keys: Iterable[str]) -> None:
    """Advisory transaction locks on `keys` (scoped by `schema`), in one statement."""
    wanted = sorted(set(keys))
    if wanted:
        await conn.execute(lock_keys_sql("$1", "$2"), schema, wanted)


Handler = Callable[[HandlerContext, Any], Awaitable[None]]
BatchHandler = Callable[[list[HandlerContext]], Awaitable[None]]
# the keys a message's handler will lock besides its subject (`HandlerContext.lock`)
LockKeys = Callable[[Any], Iterable[str]]


class Handlers:
    """Message type -> handler or batch handler. A decoded message with no handler is
    acknowledged and counted as ignored (a service reads only some of the events on a topic)."""

    def __init__(self) -> None:
        self._by_type: dict[type[Message], Handler] = {}
        self._batch_by_type: dict[type[Message], BatchHandler] = {}
        self._locks_by_type: dict[type[Message], LockKeys] = {}

    def register(self, message_type: type[Message], handler: Handler) -> None:
        self._claim(message_type)
        self._by_type[message_type] = handler

    def register_batch(
        self, message_types: Iterable[type[Message]], handler: BatchHandler, *, locks: LockKeys | None = None
    ) -> None:
        """One batch handler for these types: consecutive messages of them reach it together.
        `locks`: the keys the handler locks for a message besides its subject; the unit of work
        takes them up front with the subjects' (one statement, one global order), so the
        handler's `HandlerContext.lock` of them costs no round trip."""
        for message_type in message_types:
            self._claim(message_type)
            self._batch_by_type[message_type] = handler
            if locks is not None:
                self._locks_by_type[message_type] = locks

    def _claim(self, message_type: type[Message]) -> None:
        if message_type in self._by_type or message_type in self._batch_by_type:
            raise ValueError(f"{message_type.__name__} already has a handler")

    def on(self, message_type: type[Message]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.register(message_type, handler)
            return handler

        return register

    def get(self, message_type: type[Message]) -> Handler | None:
        return self._by_type.get(message_type)

    def batch_for(self, message_type: type[Message]) -> BatchHandler | None:
        return self._batch_by_type.get(message_type)

    def lock_keys(self, message: Message) -> Iterable[str]:
        """The keys to lock for `message` besides its subject (`register_batch`'s `locks`)."""
        locks = self._locks_by_type.get(type(message))
        return locks(message) if locks is not None else ()

    def handles(self, message_type: type[Message]) -> bool:
        return message_type in self._by_type or message_type in self._batch_by_type

    @property
    def message_types(self) -> list[type[Message]]:
        return [*self._by_type, *self._batch_by_type]
