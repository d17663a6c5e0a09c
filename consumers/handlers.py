"""Handlers and their registry: plain async functions, registered explicitly by message type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from producers import failpoints, outbox
from producers.db import DbConnection
from producers.tracing import current_trace_context
from schemas.envelope import Envelope
from schemas.messages import Message
from schemas.topics import TopicMap


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

    async def lock(self, key: str) -> None:
        """Serialise work on `key` (e.g. an order id) until this transaction ends: two messages
        about the same thing from different topics or lanes never interleave."""
        await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{self.schema}:{key}")

    async def emit(self, message: Message) -> Envelope[Message]:
        """Stage `message` in the outbox, caused by the message being handled and carrying the
        current (processing) span's trace context."""
        traceparent, tracestate = current_trace_context()
        copies = 2 if failpoints.enabled("emit.twice") else 1  # a negative control's defect
        for _ in range(copies):
            staged = await outbox.stage_message(
                self.conn,
                self.schema,
                message,
                source=self.source,
                topics=self.topics,
                caused_by=self.envelope,
                traceparent=traceparent,
                tracestate=tracestate,
            )
            self.emitted.append(staged)
        return staged


Handler = Callable[[HandlerContext, Any], Awaitable[None]]


class Handlers:
    """Message type -> handler. A decoded message with no handler is acknowledged and
    counted as ignored (a service reads only some of the events on a topic)."""

    def __init__(self) -> None:
        self._by_type: dict[type[Message], Handler] = {}

    def register(self, message_type: type[Message], handler: Handler) -> None:
        if message_type in self._by_type:
            raise ValueError(f"{message_type.__name__} already has a handler")
        self._by_type[message_type] = handler

    def on(self, message_type: type[Message]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.register(message_type, handler)
            return handler

        return register

    def get(self, message_type: type[Message]) -> Handler | None:
        return self._by_type.get(message_type)

    @property
    def message_types(self) -> list[type[Message]]:
        return list(self._by_type)
