"""The publisher against the real broker: acks, envelope headers, trace context, validation."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from producers.connection import KafkaConnection
from producers.errors import PublishValidationError
from producers.publisher import Publisher
from schemas.messages import PlaceOrder
from schemas.values import LineItem
from tests.support import create_topic_map, decoded, read_all

pytestmark = pytest.mark.kafka


def _order(order_id: str, key: str, quantity: int = 1) -> PlaceOrder:
    return PlaceOrder(
        order_id=order_id,
        idempotency_key=key,
        customer_id="c-1",
        currency="EUR",
        items=[LineItem(sku="sku-1", quantity=quantity, unit_price_minor=1250)],
    )


async def test_publish_returns_the_ack_and_the_record_carries_the_envelope(
    kafka: KafkaConnection, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"pub{unique}.")
    tracer = TracerProvider().get_tracer("test")
    async with Publisher(kafka, source="/upstream/test", topics=topics) as publisher:
        with tracer.start_as_current_span("storefront checkout") as span:
            ack = await publisher.publish(_order("o-1", "idem-0001"))
            trace_id = format(span.get_span_context().trace_id, "032x")
    assert ack.topic == topics.ingress
    [record] = await read_all(kafka, topics.ingress, at_least=1)
    assert (record.partition, record.offset) == (ack.partition, ack.offset)
    assert record.key == b"o-1"
    headers = dict(record.headers)
    assert headers["ce_type"] == b"io.sagaline.PlaceOrder"
    assert headers["ce_idempotencykey"] == b"idem-0001"
    assert trace_id in headers["traceparent"].decode()
    [envelope] = decoded([record])
    assert envelope.id == ack.event_id
    assert envelope.data == _order("o-1", "idem-0001")


async def test_a_retried_request_keeps_its_event_id_and_a_changed_body_does_not(
    kafka: KafkaConnection, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"idem{unique}.")
    async with Publisher(kafka, source="/upstream/test", topics=topics) as publisher:
        first = await publisher.publish(_order("o-2", "idem-0002"))
        retry = await publisher.publish(_order("o-2", "idem-0002"))
        changed = await publisher.publish(_order("o-2", "idem-0002", quantity=5))
    assert first.event_id == retry.event_id
    assert changed.event_id != first.event_id


async def test_an_invalid_payload_is_refused_with_the_field_path_and_nothing_is_sent(
    kafka: KafkaConnection, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"inv{unique}.")
    bad = {
        "order_id": "o-3",
        "idempotency_key": "idem-0003",
        "customer_id": "c-1",
        "currency": "EUR",
        "items": [{"sku": "sku-1", "quantity": 0, "unit_price_minor": 100}],
    }
    async with Publisher(kafka, source="/upstream/test", topics=topics) as publisher:
        with pytest.raises(PublishValidationError) as caught:
            await publisher.publish_payload("PlaceOrder", bad)
        with pytest.raises(PublishValidationError, match="unknown message type"):
            await publisher.publish_payload("ShipOrder", {})
        marker = await publisher.publish(_order("o-3", "idem-0004"))
    assert caught.value.errors[0][0] == "items.0.quantity"
    records = await read_all(kafka, topics.ingress, at_least=1)
    assert [r.offset for r in records if r.partition == marker.partition] == [marker.offset]
    assert len(records) == 1
