"""Tracing through the saga on real Kafka and PostgreSQL: one trace per order, from the
upstream's send through every service's processing of every event it caused."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.openmetrics import exposition as openmetrics

from producers.connection import KafkaConnection
from sagaline.runtime import JsonFormatter
from schemas.messages import Message, OrderConfirmed, OrderPlaced, PaymentCompleted, PlaceOrder
from schemas.registry import ce_type
from tests.saga_support import SagaPlatform, order
from tests.support import read_all, wait_until
from tests.worker_support import LedgerService, placed

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

    upstream = root.get_span_context().span_id
    [send] = [s for s in recorded if s.kind is SpanKind.PRODUCER and _parent(s) == upstream]
    processed = [s for s in recorded if s.kind is SpanKind.CONSUMER]
    # the relays' sends: each in the trace, under and linked to the processing that staged its
    # event, with the time the event waited in the outbox
    relayed = [s for s in recorded if s.kind is SpanKind.PRODUCER and s is not send]
    by_id = {_id(s): s for s in processed}
    assert {(s.attributes or {})["messaging.destination.name"] for s in relayed} == {
        saga.config.topics.orders,
        saga.config.topics.payments,
        saga.config.topics.inventory,
    }
    for span in relayed:
        staged_by = by_id[_parent(span)]
        assert [link.context.span_id for link in span.links] == [_id(staged_by)]
        delay = (span.attributes or {})["sagaline.outbox.delay_ms"]
        assert isinstance(delay, float)
        assert delay >= 0
        assert (span.start_time or 0) >= (staged_by.start_time or 0)
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

    # the saga's duration, in OpenMetrics, carries the trace id as an exemplar
    async def ended() -> bool:
        count = "sagaline_saga_duration_seconds_count"
        return bool(saga.registries["tracker"].get_sample_value(count, {"status": "CONFIRMED"}))

    await wait_until(ended)
    exposition = openmetrics.generate_latest(saga.registries["tracker"]).decode()  # type: ignore[no-untyped-call]
    exemplars = [
        line
        for line in exposition.splitlines()
        if line.startswith("sagaline_saga_duration_seconds_bucket") and " # " in line
    ]
    assert exemplars
    assert all(f'trace_id="{trace_id:032x}"' in line for line in exemplars)


async def test_log_lines_about_a_message_are_json_with_its_span_saga_and_coordinates(
    spans: InMemorySpanExporter, kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """The JSON log format (SAGALINE_LOG_FORMAT=json, the default of long-running commands):
    a handler that fails logs inside its processing span, and the dead-letter line that
    follows carries the same trace and the message's ids."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    capture = Capture()
    capture.setFormatter(JsonFormatter("ledger"))
    consumers_log = logging.getLogger("consumers")
    consumers_log.addHandler(capture)
    previous = consumers_log.level
    consumers_log.setLevel(logging.INFO)
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5,))
    await service.setup()
    try:
        # customer "bug": the ledger handler divides by zero
        [event_id] = await service.publish([placed("o-logged", customer="bug")])
        await service.start()
        await read_all(kafka, service.lanes.dlt, at_least=1)
        await service.stop()
    finally:
        consumers_log.removeHandler(capture)
        consumers_log.setLevel(previous)
        await service.close()

    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    about = [p for p in parsed if p.get("event_id") == event_id]
    raised = [p for p in about if "raised builtins.ZeroDivisionError" in p["message"]]
    [dead] = [p for p in about if "dead-lettered" in p["message"]]
    attempts = [  # the batch's fast path, then the message alone on the careful path
        s
        for s in spans.get_finished_spans()
        if s.name == f"process {service.topic}"
        and (s.attributes or {}).get("messaging.kafka.message.key") == "o-logged"
    ]
    assert len(attempts) == len(raised) == 2
    contexts = [s.context for s in attempts if s.context is not None]
    # each line written inside a handler's span carries that span's ids
    assert {(p["trace_id"], p["span_id"]) for p in raised} == {
        (f"{c.trace_id:032x}", f"{c.span_id:016x}") for c in contexts
    }
    assert dead["trace_id"] == raised[0]["trace_id"]  # outside any span: the message's own trace
    where = attempts[0].attributes or {}
    for line in [*raised, dead]:
        assert (line["saga_id"], line["topic"], line["group"]) == ("o-logged", service.topic, service.group)
        assert (str(line["partition"]), line["offset"]) == (
            where["messaging.destination.partition.id"],
            where["messaging.kafka.offset"],
        )
        assert line["service"] == "ledger"
        assert line["level"] in ("INFO", "WARNING")
        assert line["ts"].endswith("+00:00")
