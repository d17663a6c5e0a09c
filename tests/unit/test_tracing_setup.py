"""Trace context on envelopes and the tracing setup's choices (no I/O)."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from pydantic import ValidationError

from consumers.tracing import process_span
from producers.tracing import current_trace_context
from sagaline.runtime import _exporter, configure_tracing
from sagaline.settings import Settings
from schemas.envelope import Envelope
from schemas.messages import OrderPlaced
from schemas.values import LineItem, Money

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _placed() -> OrderPlaced:
    return OrderPlaced(
        order_id="o-1",
        customer_id="alice",
        items=[LineItem(sku="mug", quantity=1, unit_price_minor=100)],
        total=Money(amount_minor=100, currency="EUR"),
    )


def test_an_event_inherits_its_causes_trace_context_as_a_pair() -> None:
    cause = Envelope.new(_placed(), "/order", traceparent=PARENT, tracestate="vendor=1")
    inherited = Envelope.new(_placed(), "/payment", caused_by=cause)
    assert (inherited.traceparent, inherited.tracestate) == (PARENT, "vendor=1")
    own = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    child = Envelope.new(_placed(), "/payment", caused_by=cause, traceparent=own)
    assert (child.traceparent, child.tracestate) == (own, None)  # never the cause's tracestate


def test_what_a_handler_emits_stays_in_the_records_trace() -> None:
    """As HandlerContext.emit does it; holds with or without an SDK installed (the
    integration test checks the parent links with one)."""
    record = Envelope.new(_placed(), "/order", traceparent=PARENT)
    with process_span(record, group="g", topic="t", partition=0, offset=1):
        traceparent, tracestate = current_trace_context()
        emitted = Envelope.new(
            _placed(), "/payment", caused_by=record, traceparent=traceparent, tracestate=tracestate
        )
    assert emitted.traceparent is not None
    assert emitted.traceparent.split("-")[1] == PARENT.split("-")[1]


def test_no_exporter_by_default_and_the_named_ones_otherwise() -> None:
    assert Settings().traces_exporter == "none"
    assert configure_tracing(Settings(), "order")() is None  # nothing installed, nothing to stop
    assert isinstance(_exporter("otlp"), OTLPSpanExporter)
    assert isinstance(_exporter("console"), ConsoleSpanExporter)
    with pytest.raises(ValidationError, match="traces_exporter"):
        Settings(traces_exporter="jaeger")  # type: ignore[arg-type]
