"""Retry and dead-letter lanes of a consumer group: topic names, due times and headers.

Every group owns its lanes, so one event can fail in one service and succeed in another:

    <group>.retry.<n>   n = 1..len(delays), each consumed no earlier than its delay
    <group>.dlt         the dead-letter topic

A record keeps its original key, value and headers. Failure metadata is added with
Spring Kafka's `kafka_dlt-*` header names and encodings (partition int32, offset and
timestamp int64, big-endian; text as UTF-8), plus `sagaline_*` text headers. The
metadata is replaced, never appended, so headers do not grow across retries: the first
original coordinates are kept, the last exception wins.
"""

from __future__ import annotations

import struct
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from consumers.errors import FailureClass
from schemas.codec import Headers, Record

STACKTRACE_LIMIT = 4000
MESSAGE_LIMIT = 1000

H_ORIGINAL_TOPIC = "kafka_dlt-original-topic"
H_ORIGINAL_PARTITION = "kafka_dlt-original-partition"
H_ORIGINAL_OFFSET = "kafka_dlt-original-offset"
H_ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"
H_ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
H_ORIGINAL_GROUP = "kafka_dlt-original-consumer-group"
H_EXCEPTION_FQCN = "kafka_dlt-exception-fqcn"
H_EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
H_EXCEPTION_STACKTRACE = "kafka_dlt-exception-stacktrace"
H_ATTEMPTS = "sagaline_attempts"
H_FIRST_FAILURE = "sagaline_first-failure"
H_LAST_FAILURE = "sagaline_last-failure"
H_FAILURE_CLASS = "sagaline_failure-class"
H_SAGA_ID = "sagaline_saga-id"
H_DUE = "sagaline_retry-due"
H_LANE = "sagaline_lane"

LANE_HEADERS = (
    H_ORIGINAL_TOPIC,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TIMESTAMP_TYPE,
    H_ORIGINAL_GROUP,
    H_EXCEPTION_FQCN,
    H_EXCEPTION_MESSAGE,
    H_EXCEPTION_STACKTRACE,
    H_ATTEMPTS,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_FAILURE_CLASS,
    H_SAGA_ID,
    H_DUE,
    H_LANE,
)

DEFAULT_DELAYS_S = (1.0, 10.0, 60.0)


@dataclass(frozen=True)
class Lanes:
    """The lanes of one consumer group."""

    group: str
    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S

    def retry_topic(self, n: int) -> str:
        return f"{self.group}.retry.{n}"

    @property
    def retry_topics(self) -> list[str]:
        return [self.retry_topic(n) for n in range(1, len(self.delays_s) + 1)]

    @property
    def dlt(self) -> str:
        return f"{self.group}.dlt"

    def retry_index(self, topic: str) -> int | None:
        """1-based retry lane number of `topic`, or None if it is not one of ours."""
        prefix = f"{self.group}.retry."
        if topic.startswith(prefix) and topic[len(prefix) :].isdigit():
            n = int(topic[len(prefix) :])
            return n if 1 <= n <= len(self.delays_s) else None
        return None

    def delay_of(self, topic: str) -> float:
        n = self.retry_index(topic)
        return self.delays_s[n - 1] if n else 0.0


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a record."""

    exc: BaseException
    failure_class: FailureClass
    at: datetime


@dataclass(frozen=True)
class Origin:
    """Where a record first came from (kept across retries)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: str
    attempts: int
    first_failure: datetime | None


def origin_of(headers: Headers, topic: str, partition: int, offset: int, timestamp_ms: int) -> Origin:
    """The original coordinates: from our headers if the record is already a retry."""
    h = dict(headers)
    if H_ORIGINAL_TOPIC not in h:
        return Origin(topic, partition, offset, timestamp_ms, "CREATE_TIME", 0, None)
    try:
        return Origin(
            topic=h[H_ORIGINAL_TOPIC].decode(),
            partition=struct.unpack(">i", h[H_ORIGINAL_PARTITION])[0],
            offset=struct.unpack(">q", h[H_ORIGINAL_OFFSET])[0],
            timestamp_ms=struct.unpack(">q", h[H_ORIGINAL_TIMESTAMP])[0],
            timestamp_type=h.get(H_ORIGINAL_TIMESTAMP_TYPE, b"CREATE_TIME").decode(),
            attempts=int(h.get(H_ATTEMPTS, b"0").decode() or 0),
            first_failure=datetime.fromisoformat(h[H_FIRST_FAILURE].decode())
            if H_FIRST_FAILURE in h
            else None,
        )
    except (KeyError, ValueError, UnicodeDecodeError, struct.error):  # damaged headers: start afresh
        return Origin(topic, partition, offset, timestamp_ms, "CREATE_TIME", 0, None)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def failed_record(
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    *,
    origin: Origin,
    group: str,
    failure: Failure,
    saga_id: str | None,
    lane: Literal["retry", "dlt"],
    due_ms: int | None = None,
) -> Record:
    """The record to send to a retry or dead-letter topic."""
    kept = [(k, v) for k, v in headers if k not in LANE_HEADERS]
    exc = failure.exc
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    first = origin.first_failure or failure.at
    added: Headers = [
        (H_ORIGINAL_TOPIC, origin.topic.encode()),
        (H_ORIGINAL_PARTITION, struct.pack(">i", origin.partition)),
        (H_ORIGINAL_OFFSET, struct.pack(">q", origin.offset)),
        (H_ORIGINAL_TIMESTAMP, struct.pack(">q", origin.timestamp_ms)),
        (H_ORIGINAL_TIMESTAMP_TYPE, origin.timestamp_type.encode()),
        (H_ORIGINAL_GROUP, group.encode()),
        (H_EXCEPTION_FQCN, f"{type(exc).__module__}.{type(exc).__qualname__}".encode()),
        (H_EXCEPTION_MESSAGE, _truncate(str(exc), MESSAGE_LIMIT).encode()),
        (H_EXCEPTION_STACKTRACE, _truncate(stack, STACKTRACE_LIMIT).encode()),
        (H_ATTEMPTS, str(origin.attempts + 1).encode()),
        (H_FIRST_FAILURE, first.astimezone(UTC).isoformat().encode()),
        (H_LAST_FAILURE, failure.at.astimezone(UTC).isoformat().encode()),
        (H_FAILURE_CLASS, failure.failure_class.encode()),
        (H_LANE, lane.encode()),
    ]
    if saga_id:
        added.append((H_SAGA_ID, saga_id.encode()))
    if due_ms is not None:
        added.append((H_DUE, str(due_ms).encode()))
    return Record(key, value or b"", kept + added)


def due_ms(headers: Headers) -> int | None:
    raw = dict(headers).get(H_DUE)
    return int(raw.decode()) if raw and raw.decode().isdigit() else None
