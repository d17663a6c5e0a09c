"""Producer spans and W3C trace context, following OpenTelemetry's messaging conventions.

Uses only the OpenTelemetry API: without an SDK configured (the bootstrap's job) spans are
no-ops, and the trace context of the caller, if any, still propagates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

_tracer = trace.get_tracer("sagaline.producers")


@contextmanager
def send_span(topic: str, message_type: str) -> Iterator[Span]:
    """A PRODUCER span named `send {topic}`."""
    with _tracer.start_as_current_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={**messaging_attributes("send", topic), "cloudevents.event_type": message_type},
    ) as span:
        yield span


def messaging_attributes(operation: str, topic: str) -> dict[str, str]:
    """What every Kafka span carries (OpenTelemetry messaging conventions)."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
    }


def current_trace_context() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the current context, for the envelope."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")
