"""Tracing through the saga on real Kafka and PostgreSQL: one trace per order, from the
upstream's send through every service's processing of every event it caused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from producers.connection import KafkaConnection
from schemas.messages import Message, OrderConfirmed, OrderPlaced, PaymentCompleted, PlaceOrder
from schemas.registry import ce_type
from tests.saga_support import SagaPlatform, order
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process-wide SDK provider (OpenTelemetry allows one per process), recording in
    memory for this module and dropping spans after it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another test installed a tracer provider first"
    yield exporter
    exporter.shutdown()  # later spans are dropped, not kept in memory


@pytest.fixture
async def saga(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[SagaPlatform]:
    platform = SagaPlatform(kafka, postgres_dsn, unique)
    await platform.setup([("alice", 100_000)], [("mug", 10)])
    yield platform
    await platform.close()


def _of_order(exporter: InMemorySpanExporter, order_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("messaging.kafka.message.key") == order_id
    ]


def _parent(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _group(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("messaging.consumer.group.name", ""))


def _processing(spans: list[ReadableSpan], message: type[Message], group: str) -> list[ReadableSpan]:
    """The spans of `group` processing events of type `message`."""
    return [
        s
        for s in spans
        if _group(s) == group and (s.attributes or {}).get("cloudevents.event_type") == ce_type(message)
    ]


async def test_one_trace_follows_an_order_through_every_service(
    spans: InMemorySpanExporter, saga: SagaPlatform, unique: str
) -> None:
    order_id = f"traced-{unique}"
    await saga.start()
    with trace.get_tracer("tests.storefront").start_as_current_span("checkout") as root:
        await saga.publish(order(order_id))
    await saga.wait_status(order_id, "CONFIRMED")
    tracker = saga.config.group("tracker")

    async def tracker_saw_confirmation() -> bool:
        return bool(_processing(_of_order(spans, order_id), OrderConfirmed, tracker))

    await wait_until(tracker_saw_confirmation, timeout_s=30)
    recorded = _of_order(spans, order_id)
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in recorded if s.context} == {trace_id}

    [send] = [s for s in recorded if s.kind is SpanKind.PRODUCER]
    assert _parent(send) == root.get_span_context().span_id
    processed = [s for s in recorded if s.kind is SpanKind.CONSUMER]
    assert {_group(s) for s in processed} == {
        saga.config.group(service) for service in ("order", "payment", "inventory", "tracker")
    }
    # every processing span hangs off the send or off the processing that emitted its event
    ids = {_id(s) for s in recorded}
    for span in processed:
        assert _parent(span) in ids, span.name
        assert span.name == f"process {(span.attributes or {})['messaging.destination.name']!s}"
    [accepted] = _processing(processed, PlaceOrder, saga.config.group("order"))
    assert _parent(accepted) == _id(send)
    [charged] = _processing(processed, OrderPlaced, saga.config.group("payment"))
    assert _parent(charged) == _id(accepted)
    [reserved] = _processing(processed, PaymentCompleted, saga.config.group("inventory"))
    assert _parent(reserved) == _id(charged)
