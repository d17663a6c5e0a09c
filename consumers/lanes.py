"""Retry and dead-letter lanes of a consumer group: topic names, due times and headers.

Every group owns its lanes, so one event can fail in one service and succeed in another:

    <topic prefix><group>.retry.<n>   n = 1..len(delays), each consumed no earlier than its delay
    <topic prefix><group>.dlt         the dead-letter topic

A record keeps its original key, value and headers. Failure metadata is added with
Spring Kafka's `kafka_dlt-*` header names and encodings (partition int32, offset and
timestamp int64, big-endian; text as UTF-8), plus `sagaline_*` text headers. The
metadata is replaced, never appended, so headers do not grow across retries: the first
original coordinates are kept, the last exception wins.

Trust boundary: lane headers are read only on the group's own retry lanes, and even there
they are untrusted input. A record on any other topic is taken at its own coordinates
(whatever lane headers a producer put on it are replaced if it fails); a retry-lane record
whose lane headers cannot be used raises `LaneHeaderError`, which dead-letters it.
"""

from __future__ import annotations

import re
import struct
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from consumers.diagnostics import Redactor, bounded, utf8
from consumers.errors import FailureClass, PermanentError
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
H_REPLAY_OF = "sagaline_replay-of"  # set by `dlq replay`/`dlq edit`: the entry a record replays
H_CORRECTS = "sagaline_corrects"  # set by `dlq edit`: the event id a corrected copy replaces

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
    H_REPLAY_OF,
    H_CORRECTS,
)

DEFAULT_DELAYS_S = (1.0, 10.0, 60.0)


@dataclass(frozen=True)
class Lanes:
    """The lanes of one consumer group. `topic_prefix` is the deployment's, as on every topic."""

    group: str
    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    topic_prefix: str = ""

    @property
    def base(self) -> str:
        return f"{self.topic_prefix}{self.group}"

    def retry_topic(self, n: int) -> str:
        return f"{self.base}.retry.{n}"

    @property
    def retry_topics(self) -> list[str]:
        return [self.retry_topic(n) for n in range(1, len(self.delays_s) + 1)]

    @property
    def dlt(self) -> str:
        return f"{self.base}.dlt"

    def retry_index(self, topic: str) -> int | None:
        """1-based retry lane number of `topic`, or None if it is not one of ours."""
        prefix = f"{self.base}.retry."
        if topic.startswith(prefix) and topic[len(prefix) :].isdigit():
            n = int(topic[len(prefix) :])
            return n if 1 <= n <= len(self.delays_s) else None
        return None

    def delay_of(self, topic: str) -> float:
        n = self.retry_index(topic)
        return self.delays_s[n - 1] if n else 0.0

    def due_at(self, topic: str, headers: Headers, now_ms: float) -> float:
        """When a record of `topic` may be handled (epoch ms): at once on an input topic; on a
        retry lane at its due time, never trusted beyond the lane's delay from now, so a
        forged due time cannot park a partition."""
        if self.retry_index(topic) is None:
            return now_ms
        return min(due_ms(headers) or 0, now_ms + self.delay_of(topic) * 1000)


def first_retry_lane(dlt_topic: str) -> str:
    """The first retry lane of the group whose dead-letter topic is `dlt_topic`: where a
    replay goes, so that only that group sees it."""
    return dlt_topic.removesuffix(".dlt") + ".retry.1"


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a record."""

    exc: BaseException
    failure_class: FailureClass
    at: datetime


class LaneHeaderError(PermanentError):
    """A retry-lane record whose lane headers are missing, repeated or out of range."""


class Origin(NamedTuple):
    """Where a record first came from (kept across retries). A tuple: one is built for
    every record consumed."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: str
    attempts: int
    first_failure: datetime | None
    replay_of: int | None = None


MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime holds
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TIMESTAMP_TYPES = frozenset({"CREATE_TIME", "LOG_APPEND_TIME", "NO_TIMESTAMP_TYPE"})


def origin_of(
    headers: Iterable[tuple[str, bytes | None]],
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    lanes: Lanes,
) -> Origin:
    """The original coordinates: from the lane headers if the record is on one of the group's
    retry lanes, else the record's own. Raises `LaneHeaderError` for a retry-lane record whose
    lane headers cannot be used."""
    if lanes.retry_index(topic) is None:
        return Origin(topic, partition, offset, timestamp_ms, "CREATE_TIME", 0, None)
    return read_origin(headers)


def read_origin(headers: Iterable[tuple[str, bytes | None]]) -> Origin:
    """Parse the lane headers strictly; every value is checked against its range."""
    found: dict[str, bytes] = {}
    for name, value in headers:
        if name not in LANE_HEADERS:
            continue
        if name in found:
            raise LaneHeaderError(f"lane header {name} appears more than once")
        if value is None:
            raise LaneHeaderError(f"lane header {name} has no value")
        found[name] = value

    def required(name: str) -> bytes:
        if name not in found:
            raise LaneHeaderError(f"lane header {name} is missing")
        return found[name]

    topic = _ascii(required(H_ORIGINAL_TOPIC), H_ORIGINAL_TOPIC)
    if not _TOPIC.fullmatch(topic):
        raise LaneHeaderError(f"lane header {H_ORIGINAL_TOPIC} {_shown(topic)} is not a topic name")
    timestamp_type = _ascii(found.get(H_ORIGINAL_TIMESTAMP_TYPE, b"CREATE_TIME"), H_ORIGINAL_TIMESTAMP_TYPE)
    if timestamp_type not in _TIMESTAMP_TYPES:
        raise LaneHeaderError(f"lane header {H_ORIGINAL_TIMESTAMP_TYPE} {_shown(timestamp_type)} is unknown")
    first = found.get(H_FIRST_FAILURE)
    replay_of = found.get(H_REPLAY_OF)
    return Origin(
        topic=topic,
        partition=_packed(required(H_ORIGINAL_PARTITION), ">i", H_ORIGINAL_PARTITION, 0, 2**31 - 1),
        offset=_packed(required(H_ORIGINAL_OFFSET), ">q", H_ORIGINAL_OFFSET, 0, 2**63 - 1),
        timestamp_ms=_packed(
            required(H_ORIGINAL_TIMESTAMP), ">q", H_ORIGINAL_TIMESTAMP, -1, MAX_TIMESTAMP_MS
        ),
        timestamp_type=timestamp_type,
        attempts=_digits(found.get(H_ATTEMPTS, b"0"), H_ATTEMPTS, 6),
        first_failure=_instant(first, H_FIRST_FAILURE) if first is not None else None,
        replay_of=_digits(replay_of, H_REPLAY_OF, 18) if replay_of is not None else None,
    )


def _shown(text: str | bytes) -> str:
    return repr(text[:60]) + ("..." if len(text) > 60 else "")


def _ascii(raw: bytes, name: str) -> str:
    if not raw.isascii():
        raise LaneHeaderError(f"lane header {name} {_shown(raw)} is not ASCII")
    return raw.decode("ascii")


def _packed(raw: bytes, fmt: str, name: str, low: int, high: int) -> int:
    if len(raw) != struct.calcsize(fmt):
        raise LaneHeaderError(f"lane header {name} has {len(raw)} bytes, not {struct.calcsize(fmt)}")
    value = int(struct.unpack(fmt, raw)[0])
    if not low <= value <= high:
        raise LaneHeaderError(f"lane header {name} {value} is out of range")
    return value


def _digits(raw: bytes, name: str, most: int) -> int:
    if not (1 <= len(raw) <= most and raw.isascii() and raw.isdigit()):
        raise LaneHeaderError(f"lane header {name} {_shown(raw)} is not a number of at most {most} digits")
    return int(raw)


def _instant(raw: bytes, name: str) -> datetime:
    text = _ascii(raw, name)
    try:
        parsed = datetime.fromisoformat(text) if len(text) <= 64 else None
        if parsed is None or parsed.tzinfo is None:
            raise ValueError
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise LaneHeaderError(f"lane header {name} {_shown(text)} is not a UTC timestamp") from None


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
    redact: Redactor = Redactor(),
) -> Record:
    """The record to send to a retry or dead-letter topic. Whatever lane headers the record
    carried are replaced by the ones `origin` and `failure` say; the exception's text is
    redacted and bounded."""
    kept = [(k, v) for k, v in headers if k not in LANE_HEADERS]
    exc = failure.exc
    stack = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    first = origin.first_failure or failure.at
    added: Headers = [
        (H_ORIGINAL_TOPIC, origin.topic.encode()),
        (H_ORIGINAL_PARTITION, struct.pack(">i", origin.partition)),
        (H_ORIGINAL_OFFSET, struct.pack(">q", origin.offset)),
        (H_ORIGINAL_TIMESTAMP, struct.pack(">q", origin.timestamp_ms)),
        (H_ORIGINAL_TIMESTAMP_TYPE, origin.timestamp_type.encode()),
        (H_ORIGINAL_GROUP, group.encode()),
        (H_EXCEPTION_FQCN, f"{type(exc).__module__}.{type(exc).__qualname__}".encode()),
        (H_EXCEPTION_MESSAGE, utf8(bounded(redact(str(exc)), MESSAGE_LIMIT))),
        (H_EXCEPTION_STACKTRACE, utf8(bounded(stack, STACKTRACE_LIMIT))),
        (H_ATTEMPTS, str(origin.attempts + 1).encode()),
        (H_FIRST_FAILURE, first.astimezone(UTC).isoformat().encode()),
        (H_LAST_FAILURE, failure.at.astimezone(UTC).isoformat().encode()),
        (H_FAILURE_CLASS, failure.failure_class.encode()),
        (H_LANE, lane.encode()),
    ]
    if saga_id:
        added.append((H_SAGA_ID, utf8(saga_id)))
    if origin.replay_of is not None:
        added.append((H_REPLAY_OF, str(origin.replay_of).encode()))
    if due_ms is not None:
        added.append((H_DUE, str(due_ms).encode()))
    return Record(key, value or b"", kept + added)


def due_ms(headers: Headers) -> int | None:
    """When a retry-lane record is due (epoch ms), or None when it says nothing usable
    (such a record is due at once; its other lane headers decide whether it is usable)."""
    raw = None
    for name, value in headers:
        if name == H_DUE:
            raw = value
    if raw is None or not (1 <= len(raw) <= 15 and raw.isascii() and raw.isdigit()):
        return None
    return int(raw)
