"""Reading a dead-letter record's diagnostics, and building what replay and edit send.

Pure functions, no I/O: the indexer stores what `parse` finds; `replay_record` and
`corrected_record` build the records sent back to the failing group's retry lane.

A dead letter is untrusted input like any record (anyone who may write a `.dlt` topic can
forge its headers): `parse` never raises, and everything it returns fits its column — text
without NUL (PostgreSQL refuses 0x00) and bounded, numbers and instants in range.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumers import lanes as h
from consumers.diagnostics import bounded
from schemas.codec import Headers, Record, encode
from schemas.envelope import Envelope
from schemas.messages import Message

H_REPLAY_OF = h.H_REPLAY_OF
H_CORRECTS = h.H_CORRECTS
_ORIGIN = (
    h.H_ORIGINAL_TOPIC,
    h.H_ORIGINAL_PARTITION,
    h.H_ORIGINAL_OFFSET,
    h.H_ORIGINAL_TIMESTAMP,
    h.H_ORIGINAL_TIMESTAMP_TYPE,
    h.H_ORIGINAL_GROUP,
)
TEXT_LIMIT = 1000  # characters of a filterable text column


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


def storable(raw: bytes | str | None, limit: int = TEXT_LIMIT) -> str | None:
    """Text a PostgreSQL text column accepts: UTF-8 (invalid bytes become U+FFFD), NUL shown
    as U+FFFD, bounded."""
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return bounded(text.replace("\x00", "\ufffd"), limit)


def _int(raw: bytes | None, fmt: str, low: int, high: int) -> int | None:
    if raw is None or len(raw) != struct.calcsize(fmt):
        return None
    value = int(struct.unpack(fmt, raw)[0])
    return value if low <= value <= high else None


def _digits(raw: bytes | None, most: int) -> int | None:
    if raw is None or not (1 <= len(raw) <= most and raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


def _time(raw: bytes | None) -> datetime | None:
    if raw is None or len(raw) > 64 or not raw.isascii():
        return None
    try:
        parsed = datetime.fromisoformat(raw.decode("ascii"))
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def parse(dlt_topic: str, key: bytes | None, headers: Headers) -> DeadLetterFields:
    """Everything an operator filters on, from the record's headers. Never raises: a header
    that is missing, null, repeated (the last one counts) or out of range gives None."""
    hd = dict(headers)
    timestamp_ms = _int(hd.get(h.H_ORIGINAL_TIMESTAMP), ">q", 0, h.MAX_TIMESTAMP_MS)
    stack = hd.get(h.H_EXCEPTION_STACKTRACE)
    return DeadLetterFields(
        consumer_group=storable(hd.get(h.H_ORIGINAL_GROUP)) or storable(dlt_topic.removesuffix(".dlt")) or "",
        source_topic=storable(hd.get(h.H_ORIGINAL_TOPIC)),
        source_partition=_int(hd.get(h.H_ORIGINAL_PARTITION), ">i", 0, 2**31 - 1),
        source_offset=_int(hd.get(h.H_ORIGINAL_OFFSET), ">q", 0, 2**63 - 1),
        source_timestamp=datetime.fromtimestamp(timestamp_ms / 1000, UTC)
        if timestamp_ms is not None
        else None,
        event_id=storable(hd.get("ce_id")),
        event_type=storable(hd.get("ce_type")),
        saga_id=storable(hd.get(h.H_SAGA_ID) or hd.get("ce_sagaid")),
        record_key=storable(key),
        failure_class=storable(hd.get(h.H_FAILURE_CLASS)),
        exception_type=storable(hd.get(h.H_EXCEPTION_FQCN)),
        exception_message=storable(hd.get(h.H_EXCEPTION_MESSAGE), h.MESSAGE_LIMIT),
        stacktrace=storable(stack, h.STACKTRACE_LIMIT),
        attempts=_digits(hd.get(h.H_ATTEMPTS), 6) or 1,
        first_failure=_time(hd.get(h.H_FIRST_FAILURE)),
        last_failure=_time(hd.get(h.H_LAST_FAILURE)),
        replay_of=_digits(hd.get(H_REPLAY_OF), 18),
    )


def unparsed(dlt_topic: str) -> DeadLetterFields:
    """The fields of a dead letter whose headers could not be stored: only its group."""
    return parse(dlt_topic, None, [])


def headers_to_json(headers: Headers) -> list[list[str | None]]:
    """Headers as JSON for a jsonb column, losslessly: `[name, base64 value]`, a null value
    as null; a name jsonb cannot hold (it has a NUL) as `[shown name, value, base64 name]`."""
    stored: list[list[str | None]] = []
    for name, value in headers:
        encoded = base64.b64encode(value).decode() if value is not None else None
        if "\x00" in name:
            stored.append(
                [storable(name), encoded, base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()]
            )
        else:
            stored.append([name, encoded])
    return stored


def headers_from_json(stored: Any) -> Headers:
    headers: Headers = []
    for item in stored:
        name = base64.b64decode(item[2]).decode("utf-8", "surrogatepass") if len(item) > 2 else item[0]
        headers.append((name, base64.b64decode(item[1]) if item[1] is not None else None))
    return headers


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
    original = [(k, v) for k, v in headers if k not in h.LANE_HEADERS]
    return Record(key, value or b"", original + _lane_headers(headers, dead_letter_id, now))


def corrected_record(
    dead_letter_id: int, original_headers: Headers, corrected: Envelope[Message], now: datetime
) -> Record:
    """A corrected copy: a new event id, linked to the event it corrects and to its entry."""
    record = encode(corrected)
    original_id = dict(original_headers).get("ce_id", b"")
    extra = [*_lane_headers(original_headers, dead_letter_id, now), (H_CORRECTS, original_id)]
    return Record(record.key, record.value, [*record.headers, *extra])
