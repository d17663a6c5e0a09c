"""Which message a log line is about: a context variable the runtime sets while it works on
one message, and the log formatter reads (sagaline.runtime.JsonFormatter), so every line
written meanwhile — by the runtime or by a handler — carries the message's coordinates, ids
and trace context without passing them around."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from schemas.envelope import Envelope

_about: ContextVar[Mapping[str, Any] | None] = ContextVar("sagaline_log_message", default=None)


@contextmanager
def about_message(
    *, group: str, topic: str, partition: int, offset: int, envelope: Envelope[Any] | None = None
) -> Iterator[None]:
    """Log lines written inside are about this record (and its envelope, once decoded)."""
    fields: dict[str, Any] = {"group": group, "topic": topic, "partition": partition, "offset": offset}
    if envelope is not None:
        fields.update(
            event_id=envelope.id,
            event_type=envelope.type,
            saga_id=envelope.saga_id,
            traceparent=envelope.traceparent,
        )
    token = _about.set(fields)
    try:
        yield
    finally:
        _about.reset(token)


def current() -> Mapping[str, Any] | None:
    """The message the current log line is about, if any."""
    return _about.get()
