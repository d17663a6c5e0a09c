"""The envelope: CloudEvents 1.0 context attributes around one message.

On the wire (Kafka protocol binding, binary mode) the attributes travel as `ce_*` headers,
the record value is the JSON data and the record key is the order id; see `codec.py`.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.messages import Command, Message
from schemas.registry import ce_type

M = TypeVar("M", bound=Message)

DATA_CONTENT_TYPE = "application/json"
DATASCHEMA_BASE = "https://sagaline.dev/schemas/"


_REQUEST_ID_NAMESPACE = uuid.UUID("6f0f3c1e-3b0a-4d5e-9a57-5a6167616c69")


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix time in milliseconds, then 74 random bits. Ids
    that are ordered by time land at the right edge of the btree indexes that hold them
    (every group's inbox, the outbox, the tracker's timeline) instead of on a random page of
    each: an insert dirties the pages its neighbours just dirtied, so fewer pages are written
    and fewer full-page images follow each checkpoint."""
    random = int.from_bytes(os.urandom(10))
    value = (
        (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version
        | (random >> 62 & 0xFFF) << 64  # rand_a
        | 0b10 << 62  # variant
        | random & 0x3FFF_FFFF_FFFF_FFFF  # rand_b
    )
    digits = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, without building the UUID
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def dataschema_of(cls: type[Message]) -> str:
    """The CloudEvents `dataschema` of a message class: its JSON Schema's URI."""
    return f"{DATASCHEMA_BASE}{cls.__name__}/v{cls.schema_version}.json"


def request_event_id(command: Command) -> str:
    """A request's event id is derived from its idempotency key and body: a retry of the same
    request has the same id (consumers drop it as a duplicate), while the same key with a
    different body gets a different id (so the order service can reject the conflict)."""
    body = hashlib.sha256(command.model_dump_json().encode()).hexdigest()
    return str(
        uuid.uuid5(_REQUEST_ID_NAMESPACE, f"{type(command).__name__}:{command.idempotency_key}:{body}")
    )


class Envelope(BaseModel, Generic[M]):
    """One message plus its context: identity, origin, time, saga and causation, trace."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=new_event_id, min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256, description="URI-reference of the producer.")
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    saga_id: str = Field(min_length=1, max_length=128, description="Correlation id of the saga.")
    causation_id: str | None = Field(default=None, max_length=128)
    idempotency_key: str | None = Field(default=None, max_length=128)
    traceparent: str | None = Field(default=None, max_length=55)
    tracestate: str | None = Field(default=None, max_length=512)
    data: M

    @property
    def type(self) -> str:
        return ce_type(type(self.data))

    @property
    def subject(self) -> str:
        return self.data.key

    @property
    def schema_version(self) -> int:
        return type(self.data).schema_version

    @property
    def dataschema(self) -> str:
        return dataschema_of(type(self.data))

    @classmethod
    def new(
        cls,
        data: M,
        source: str,
        *,
        caused_by: Envelope[Message] | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Envelope[M]:
        """Wrap `data`; saga and causation come from the envelope that caused it, if any, and
        so does the trace context unless one is given (traceparent and tracestate go together)."""
        idempotency_key = data.idempotency_key if isinstance(data, Command) else None
        if traceparent is None and caused_by is not None:
            traceparent, tracestate = caused_by.traceparent, caused_by.tracestate
        return cls(
            id=request_event_id(data) if isinstance(data, Command) else new_event_id(),
            source=source,
            saga_id=caused_by.saga_id if caused_by else data.order_id,
            causation_id=caused_by.id if caused_by else None,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            tracestate=tracestate,
            data=data,
        )
