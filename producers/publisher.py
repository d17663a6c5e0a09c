"""The publisher: an async context manager over an idempotent `acks=all` aiokafka producer.

For upstream services without a database of their own: `publish(message)` wraps the
message in an envelope, injects trace context, sends it to its topic (keyed by order id)
and returns the broker's acknowledgement. Services with a database stage events in their
transactional outbox instead (`producers.outbox`), and the relay publishes them through
this same class.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    UnsupportedForMessageFormatError,
)

from producers.connection import KafkaConnection, unreachable
from producers.errors import DeliveryError, PublishValidationError
from producers.tracing import current_trace_context, send_span
from schemas.codec import Record, encode, parse_message
from schemas.envelope import Envelope
from schemas.errors import ContractViolation, UnknownMessageType
from schemas.messages import Message
from schemas.topics import TopicMap

# Stated once: every sagaline producer is idempotent, waits for all in-sync replicas, and
# batches a little (linger) for throughput without holding a record for long.
SAFE_PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": None,
    "request_timeout_ms": 30_000,
}

# For senders that enqueue a whole pass and then wait for it (the relay, the retry and
# dead-letter lanes): what they enqueue together already leaves as one batch per partition,
# so lingering would only add its 5 ms to every hop of a saga.
PASS_SENDER: dict[str, Any] = {"linger_ms": 0}


@dataclass(frozen=True)
class Ack:
    """Where the broker stored a record."""

    topic: str
    partition: int
    offset: int
    event_id: str


class Publisher:
    """Publishes envelopes; use as `async with Publisher(...) as publisher:`."""

    def __init__(
        self,
        kafka: KafkaConnection,
        *,
        source: str,
        topics: TopicMap | None = None,
        **producer_options: Any,
    ) -> None:
        self.source = source
        self.topics = topics or TopicMap()
        self._bootstrap = kafka.bootstrap_servers
        self._kafka = kafka
        self._producer = AIOKafkaProducer(
            **kafka.client_kwargs(), **{**SAFE_PRODUCER_DEFAULTS, **producer_options}
        )

    async def __aenter__(self) -> Publisher:
        try:
            await self._producer.start()
        except KafkaConnectionError as exc:
            await self._producer.stop()  # release what start() opened
            raise await unreachable(self._kafka, exc) from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()  # flushes what is still buffered

    async def publish(self, message: Message, *, caused_by: Envelope[Message] | None = None) -> Ack:
        """Send one message to its topic and wait for the broker's acknowledgement."""
        topic = self.topics.topic_for(type(message))
        with send_span(topic, type(message).__name__) as span:
            traceparent, tracestate = current_trace_context()
            envelope = Envelope.new(
                message, self.source, caused_by=caused_by, traceparent=traceparent, tracestate=tracestate
            )
            span.set_attribute("messaging.message.id", envelope.id)
            span.set_attribute("messaging.kafka.message.key", envelope.subject)
            ack = await self.send(topic, encode(envelope), envelope.id)
            span.set_attribute("messaging.destination.partition.id", str(ack.partition))
            span.set_attribute("messaging.kafka.offset", ack.offset)
            return ack

    async def publish_payload(self, type_name: str, payload: Any) -> Ack:
        """Validate a JSON-like payload as `type_name`, then publish it. Nothing is sent when
        it is invalid: `PublishValidationError` lists each field path and problem."""
        return await self.publish(parse_payload(type_name, payload))

    async def send(self, topic: str, record: Record, event_id: str) -> Ack:
        """Send an encoded record and wait for its acknowledgement."""
        future = await self.enqueue(topic, record)
        return await self.acknowledged(future, topic, event_id)

    async def enqueue(self, topic: str, record: Record) -> asyncio.Future[Any]:
        """Hand a record to the producer's batches; await the returned future for the ack."""
        try:
            future: asyncio.Future[Any] = await self._producer.send(
                topic, record.value, key=record.key, headers=record.headers
            )
        except KafkaError as exc:
            raise _delivery_error(exc) from exc
        return future

    @staticmethod
    async def acknowledged(future: asyncio.Future[Any], topic: str, event_id: str) -> Ack:
        try:
            metadata = await future
        except KafkaError as exc:
            raise _delivery_error(exc) from exc
        return Ack(topic=topic, partition=metadata.partition, offset=metadata.offset, event_id=event_id)


def parse_payload(type_name: str, payload: Any) -> Message:
    """A message from a type name and payload, or `PublishValidationError`."""
    try:
        return parse_message(type_name, payload)
    except ContractViolation as exc:
        raise PublishValidationError(str(exc), exc.errors) from None
    except UnknownMessageType:
        raise PublishValidationError(f"unknown message type {type_name!r}", [("(type)", "unknown")]) from None


# Errors about one record, not about the broker or the client: the record will never be
# accepted as it is, and other records are not affected.
_RECORD_REFUSED = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    InvalidTopicError,
    UnsupportedForMessageFormatError,
)


def _delivery_error(exc: KafkaError) -> DeliveryError:
    unknown = isinstance(exc, KafkaTimeoutError | RequestTimedOutError)
    refused = isinstance(exc, _RECORD_REFUSED)
    return DeliveryError(f"{type(exc).__name__}: {exc}", outcome_unknown=unknown, record_refused=refused)
