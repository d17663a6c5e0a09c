"""Consumer spans, following OpenTelemetry's messaging conventions.

Each message a handler applies runs in a CONSUMER span `process {topic}` whose parent is the
trace context the record carries (its `traceparent`/`tracestate` headers), so a saga reads as
one trace: the upstream's send, then each service's processing of each event it caused.
Events a handler emits carry the processing span's context onwards (`HandlerContext.emit`).

Uses only the OpenTelemetry API: without an SDK configured no span is built, and the record's
trace context still propagates unchanged to what the handler emits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind

from producers.tracing import messaging_attributes
from schemas.envelope import Envelope

_tracer = trace.get_tracer("sagaline.consumers")


@contextmanager
def process_span(
    envelope: Envelope[Any], *, group: str, topic: str, partition: int, offset: int
) -> Iterator[Span]:
    """A CONSUMER span named `process {topic}`, child of the record's trace context. An
    exception leaving it is recorded on the span and marks it as an error."""
    if not _sdk_installed():
        # Nothing would record the span: skip building it (about 10 µs a message); what the
        # handler emits inherits the record's trace context from its cause instead.
        yield INVALID_SPAN
        return
    carrier = {
        name: value
        for name, value in (("traceparent", envelope.traceparent), ("tracestate", envelope.tracestate))
        if value
    }
    with _tracer.start_as_current_span(
        f"process {topic}",
        context=propagate.extract(carrier),
        kind=SpanKind.CONSUMER,
        attributes={
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
        },
    ) as span:
        yield span


def _sdk_installed() -> bool:
    """Whether a real tracer provider was set (the API's default is a proxy to a no-op)."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)
