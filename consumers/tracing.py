"""Consumer spans, following OpenTelemetry's messaging conventions.

Each message a handler applies runs in a CONSUMER span `process {topic}` whose parent is the
trace context the record carries (its `traceparent`/`tracestate` headers), so a saga reads as
one trace: the upstream's send, then each service's processing of each event it caused.
Events a handler emits carry the processing span's context onwards (`HandlerContext.emit`).

Uses only the OpenTelemetry API: without an SDK configured no span is built, and the record's
trace context still propagates unchanged to what the handler emits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    Span,
    SpanKind,
    Status,
    StatusCode,
)

from producers.tracing import messaging_attributes, sdk_installed
from schemas.envelope import Envelope

TraceContext = tuple[str | None, str | None]

_tracer = trace.get_tracer("sagaline.consumers")


@contextmanager
def process_span(
    envelope: Envelope[Any], *, group: str, topic: str, partition: int, offset: int
) -> Iterator[Span]:
    """A CONSUMER span named `process {topic}`, child of the record's trace context, current
    while the handler runs. An exception leaving it is recorded on the span and marks it as
    an error."""
    if not sdk_installed():
        # Nothing would record the span: skip building it (about 10 µs a message); what the
        # handler emits inherits the record's trace context from its cause instead.
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        f"process {topic}",
        context=_parent(envelope),
        kind=SpanKind.CONSUMER,
        attributes=_attributes(envelope, group, topic, partition, offset),
    ) as span:
        yield span


@dataclass(frozen=True)
class Delivery:
    """Where a message came from, for its span."""

    envelope: Envelope[Any]
    topic: str
    partition: int
    offset: int


@contextmanager
def process_spans(deliveries: Sequence[Delivery], *, group: str) -> Iterator[list[TraceContext | None]]:
    """One `process {topic}` span per message of a batch handler's call, none of them current
    (they are siblings, not nested): yields each span's (traceparent, tracestate) for what
    that message emits. An exception leaving the call is recorded on every span (the call
    applied them together, so it failed for each). Without an SDK: no spans, and Nones."""
    if not sdk_installed():
        yield [None] * len(deliveries)
        return
    spans = [
        _tracer.start_span(
            f"process {d.topic}",
            context=_parent(d.envelope),
            kind=SpanKind.CONSUMER,
            attributes=_attributes(d.envelope, group, d.topic, d.partition, d.offset),
        )
        for d in deliveries
    ]
    contexts: list[TraceContext | None] = []
    for span in spans:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        contexts.append((carrier.get("traceparent"), carrier.get("tracestate")))
    try:
        yield contexts
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        for span in spans:
            span.end()


def _parent(envelope: Envelope[Any]) -> Context:
    carrier = {
        name: value
        for name, value in (("traceparent", envelope.traceparent), ("tracestate", envelope.tracestate))
        if value
    }
    return propagate.extract(carrier)


def _attributes(
    envelope: Envelope[Any], group: str, topic: str, partition: int, offset: int
) -> dict[str, Any]:
    return {
        **messaging_attributes("process", topic),
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
        "messaging.consumer.group.name": group,
        "messaging.message.id": envelope.id,
        "messaging.kafka.message.key": envelope.subject,
        "cloudevents.event_id": envelope.id,
        "cloudevents.event_type": envelope.type,
        "cloudevents.event_source": envelope.source,
        "cloudevents.event_subject": envelope.subject,
    }
