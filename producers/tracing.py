"""Producer spans and W3C trace context, following OpenTelemetry's messaging conventions.

Uses only the OpenTelemetry API: without an SDK configured (the bootstrap's job) spans are
no-ops, and the trace context of the caller, if any, still propagates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind

_tracer = trace.get_tracer("sagaline.producers")
TRACE_HEADERS = ("traceparent", "tracestate")


@contextmanager
def send_span(topic: str, message_type: str) -> Iterator[Span]:
    """A PRODUCER span named `send {topic}`."""
    with _tracer.start_as_current_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={**messaging_attributes("send", topic), "cloudevents.event_type": message_type},
    ) as span:
        yield span


def sdk_installed() -> bool:
    """Whether a real tracer provider was set (the API's default is a proxy to a no-op):
    without one, building spans is work that nothing records."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def relay_send_span(
    topic: str,
    headers: Sequence[tuple[str, bytes | None]],
    *,
    event_id: str,
    key: bytes | None,
    delay_s: float,
) -> Span | None:
    """A PRODUCER span `send {topic}` for a staged event the relay publishes, in the trace of
    the span that staged it (its `traceparent` header) and linked to that span, so a trace
    shows the time the event waited in the outbox (`sagaline.outbox.delay_ms`). Not current:
    the relay ends it when the broker acknowledges. None when no SDK would record it."""
    if not sdk_installed():
        return None
    carrier = {name: value.decode("latin-1") for name, value in headers if name in TRACE_HEADERS and value}
    context = propagate.extract(carrier)
    staged = trace.get_current_span(context).get_span_context()
    return _tracer.start_span(
        f"send {topic}",
        context=context,
        kind=SpanKind.PRODUCER,
        links=[Link(staged, {"sagaline.link": "staged by"})] if staged.is_valid else [],
        attributes={
            **messaging_attributes("send", topic),
            "messaging.message.id": event_id,
            "messaging.kafka.message.key": (key or b"").decode("utf-8", "replace"),
            "sagaline.outbox.delay_ms": round(delay_s * 1000, 3),
        },
    )


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
