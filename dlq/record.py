"""Reading a dead-letter record's diagnostics, and building what replay and edit send.

Pure functions, no I/O: the indexer stores what `parse` finds; `replay_record` and
`corrected_record` build the records sent back to the failing group's retry lane.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumers import lanes as h
from schemas.codec import Headers, Record, encode
from schemas.envelope import Envelope
from schemas.messages import Message

H_REPLAY_OF = "sagaline_replay-of"
H_CORRECTS = "sagaline_corrects"
_ORIGIN = (
    h.H_ORIGINAL_TOPIC,
    h.H_ORIGINAL_PARTITION,
    h.H_ORIGINAL_OFFSET,
    h.H_ORIGINAL_TIMESTAMP,
    h.H_ORIGINAL_TIMESTAMP_TYPE,
    h.H_ORIGINAL_GROUP,
)
_LANE_HEADERS = (*h.LANE_HEADERS, H_REPLAY_OF, H_CORRECTS)


@dataclass(frozen=True)
class DeadLetterFields:
    consumer_group: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    source_timestamp: datetime | None
    event_id: str | None
    event_type: str | None
    saga_id: str | None
    record_key: str | None
    failure_class: str | None
    exception_type: str | None
    exception_message: str | None
    stacktrace: str | None
    attempts: int
    first_failure: datetime | None
    last_failure: datetime | None
    replay_of: int | None


def _text(headers: dict[str, bytes], name: str) -> str | None:
    raw = headers.get(name)
    return raw.decode("utf-8", errors="replace") if raw is not None else None


def _unpack(headers: dict[str, bytes], name: str, fmt: str) -> int | None:
    try:
        return int(struct.unpack(fmt, headers[name])[0])
    except (KeyError, struct.error):
        return None


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def parse(dlt_topic: str, key: bytes | None, headers: Headers) -> DeadLetterFields:
    """Everything an operator filters on, from the record's headers. Never raises."""
    hd = dict(headers)
    timestamp_ms = _unpack(hd, h.H_ORIGINAL_TIMESTAMP, ">q")
    attempts = _text(hd, h.H_ATTEMPTS)
    replay_of = _text(hd, H_REPLAY_OF)
    return DeadLetterFields(
        consumer_group=_text(hd, h.H_ORIGINAL_GROUP) or dlt_topic.removesuffix(".dlt"),
        source_topic=_text(hd, h.H_ORIGINAL_TOPIC),
        source_partition=_unpack(hd, h.H_ORIGINAL_PARTITION, ">i"),
        source_offset=_unpack(hd, h.H_ORIGINAL_OFFSET, ">q"),
        source_timestamp=datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        if timestamp_ms is not None
        else None,
        event_id=_text(hd, "ce_id"),
        event_type=_text(hd, "ce_type"),
        saga_id=_text(hd, h.H_SAGA_ID) or _text(hd, "ce_sagaid"),
        record_key=key.decode("utf-8", errors="replace") if key is not None else None,
        failure_class=_text(hd, h.H_FAILURE_CLASS),
        exception_type=_text(hd, h.H_EXCEPTION_FQCN),
        exception_message=_text(hd, h.H_EXCEPTION_MESSAGE),
        stacktrace=_text(hd, h.H_EXCEPTION_STACKTRACE),
        attempts=int(attempts) if attempts and attempts.isdigit() else 1,
        first_failure=_time(_text(hd, h.H_FIRST_FAILURE)),
        last_failure=_time(_text(hd, h.H_LAST_FAILURE)),
        replay_of=int(replay_of) if replay_of and replay_of.isdigit() else None,
    )


def headers_to_json(headers: Headers) -> list[list[str]]:
    return [[name, base64.b64encode(value or b"").decode()] for name, value in headers]


def headers_from_json(stored: Any) -> Headers:
    return [(name, base64.b64decode(value)) for name, value in stored]


def retry_lane(group: str) -> str:
    return f"{group}.retry.1"


def _lane_headers(original: Headers, dead_letter_id: int, now: datetime) -> Headers:
    kept_origin = [(k, v) for k, v in original if k in _ORIGIN]
    return [
        *kept_origin,
        (h.H_DUE, str(int(now.timestamp() * 1000)).encode()),
        (H_REPLAY_OF, str(dead_letter_id).encode()),
    ]


def replay_record(
    dead_letter_id: int, key: bytes | None, value: bytes | None, headers: Headers, now: datetime
) -> Record:
    """The original record again — same key, value, event id and idempotency key, so the
    failing group's inbox drops it if it was ever applied — due at once, linked to its entry.
    Failure headers are dropped: a new failure starts a fresh count."""
    original = [(k, v) for k, v in headers if k not in _LANE_HEADERS]
    return Record(key, value or b"", original + _lane_headers(headers, dead_letter_id, now))


def corrected_record(
    dead_letter_id: int, original_headers: Headers, corrected: Envelope[Message], now: datetime
) -> Record:
    """A corrected copy: a new event id, linked to the event it corrects and to its entry."""
    record = encode(corrected)
    original_id = dict(original_headers).get("ce_id", b"")
    extra = [*_lane_headers(original_headers, dead_letter_id, now), (H_CORRECTS, original_id)]
    return Record(record.key, record.value, [*record.headers, *extra])
