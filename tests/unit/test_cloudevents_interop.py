"""Our records read correctly with the official CloudEvents SDK's Kafka binding, both ways."""

from __future__ import annotations

import json

from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import KafkaMessage, from_binary, to_binary
from hypothesis import given, settings

from schemas.codec import decode, encode
from schemas.envelope import Envelope
from schemas.messages import Message, PaymentCompleted
from schemas.values import Money, StockLine
from tests.unit.strategies import envelopes


@given(envelopes())
@settings(max_examples=100)
def test_the_sdk_reads_what_we_write(envelope: Envelope[Message]) -> None:
    record = encode(envelope)
    event = from_binary(KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value))
    assert event["specversion"] == "1.0"
    assert event["id"] == envelope.id
    assert event["type"] == f"io.sagaline.{type(envelope.data).__name__}"
    assert event["source"] == envelope.source
    assert event["subject"] == envelope.data.order_id
    assert event["datacontenttype"] == "application/json"
    assert event["sagaid"] == envelope.saga_id
    assert event["schemaversion"] == "1"
    assert event["partitionkey"] == envelope.data.order_id.encode()
    assert event.get_data() == json.loads(envelope.data.model_dump_json())


def test_we_read_what_the_sdk_writes() -> None:
    payment = PaymentCompleted(
        order_id="o-42",
        payment_id="p-1",
        customer_id="c-7",
        amount=Money(amount_minor=1999, currency="EUR"),
        lines=[StockLine(sku="mug", quantity=1)],
    )
    event = CloudEvent.create(
        {
            "type": "io.sagaline.PaymentCompleted",
            "source": "/polyglot/payment",
            "subject": "o-42",
            "datacontenttype": "application/json",
            "sagaid": "saga-o-42",
            "causationid": "evt-0",
            "schemaversion": "1",
            "partitionkey": "o-42",
        },
        json.loads(payment.model_dump_json()),
    )
    message = to_binary(event)
    headers = [(name, value) for name, value in message.headers.items()]
    envelope = decode(message.value, headers)
    assert message.key == "o-42"
    assert envelope.data == payment
    assert envelope.id == event["id"]
    assert envelope.source == "/polyglot/payment"
    assert envelope.saga_id == "saga-o-42"
    assert envelope.causation_id == "evt-0"
