"""Kafka records <-> envelopes, following the CloudEvents Kafka protocol binding (binary mode).

`encode(envelope)` gives the record's key, value and headers. `decode(value, headers)` gives
an `Envelope` or raises one of the `DecodeError` family — never a bare KeyError/ValueError,
whatever the bytes. It runs in two parts a consumer can also call one by one:
`read_attributes(headers)` (the headers as far as the message type) and
`decode_value(attributes, value)` (the rest).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import ValidationError
from pydantic_core import from_json

from schemas.envelope import DATA_CONTENT_TYPE, Envelope, dataschema_of
from schemas.errors import ContractViolation, DecodeError, InvalidHeader, MissingHeader, NotJson
from schemas.messages import Message
from schemas.registry import DEFAULT_REGISTRY, TYPE_PREFIX, MessageRegistry, ce_type

Headers = list[tuple[str, bytes | None]]  # a Kafka header value may be null
_DIGITS = re.compile(r"[0-9]{1,9}")

SPECVERSION = "1.0"
# CloudEvents extension attribute names: lowercase letters and digits only.
EXT_SAGA_ID = "sagaid"
EXT_CAUSATION_ID = "causationid"
EXT_IDEMPOTENCY_KEY = "idempotencykey"
EXT_SCHEMA_VERSION = "schemaversion"
TRACE_HEADERS = ("traceparent", "tracestate")  # W3C trace context, as OpenTelemetry propagates it
_PLAIN_HEADERS = frozenset({"content-type", *TRACE_HEADERS})
_BOM = b"\xef\xbb\xbf"  # RFC 8259 lets a parser ignore it; nothing else but UTF-8 is JSON on the wire


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    headers: Headers


def encode(envelope: Envelope[Any]) -> Record:
    """The record of `envelope`: its data as the value, its attributes as `ce_*` headers
    (content-type first; an attribute that is None is left out)."""
    data: Message = envelope.data
    type_header, dataschema_header, version_header = _class_headers(type(data))
    subject = data.key.encode()
    headers: Headers = [
        _CONTENT_TYPE_HEADER,
        _SPECVERSION_HEADER,
        ("ce_id", envelope.id.encode()),
        ("ce_source", envelope.source.encode()),
        type_header,
        ("ce_time", envelope.time.isoformat().replace("+00:00", "Z").encode()),
        ("ce_subject", subject),
        dataschema_header,
        (f"ce_{EXT_SAGA_ID}", envelope.saga_id.encode()),
    ]
    if envelope.causation_id is not None:
        headers.append((f"ce_{EXT_CAUSATION_ID}", envelope.causation_id.encode()))
    if envelope.idempotency_key is not None:
        headers.append((f"ce_{EXT_IDEMPOTENCY_KEY}", envelope.idempotency_key.encode()))
    headers.append(version_header)
    if envelope.traceparent is not None:
        headers.append(("traceparent", envelope.traceparent.encode()))
    if envelope.tracestate is not None:
        headers.append(("tracestate", envelope.tracestate.encode()))
    return Record(subject, data.model_dump_json().encode(), headers)


_CONTENT_TYPE_HEADER = ("content-type", DATA_CONTENT_TYPE.encode())
_SPECVERSION_HEADER = ("ce_specversion", SPECVERSION.encode())


@functools.cache
def _class_headers(cls: type[Message]) -> tuple[tuple[str, bytes], tuple[str, bytes], tuple[str, bytes]]:
    """The headers a message class decides: its `ce_type`, `ce_dataschema` and schema version."""
    return (
        ("ce_type", ce_type(cls).encode()),
        ("ce_dataschema", dataschema_of(cls).encode()),
        (f"ce_{EXT_SCHEMA_VERSION}", str(cls.schema_version).encode()),
    )


def header_map(headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """The contract's headers (`ce_*`, content-type, trace context) as text, names
    lower-cased; other headers (a retry lane's, a platform's) are not ours to read. A
    repeated or non-UTF-8 contract header is invalid."""
    result: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if not (name.startswith("ce_") or name in _PLAIN_HEADERS):
            continue
        if name in result:
            raise InvalidHeader(f"header {name!r} appears more than once")
        try:
            result[name] = (raw_value or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidHeader(f"header {name!r} is not UTF-8") from None
    return result


class Attributes(NamedTuple):
    """A record's contract headers (`header_map`), and the message class its `ce_type` names."""

    values: dict[str, str]
    cls: type[Message]


def read_attributes(
    headers: Iterable[tuple[str, bytes | None]], registry: MessageRegistry = DEFAULT_REGISTRY
) -> Attributes:
    """The first part of `decode`: the headers, checked as far as the message type (spec
    version, content type, a `ce_type` the registry knows). A consumer that does not handle
    that type can stop here, without reading the value."""
    attrs = header_map(headers)
    if _required(attrs, "specversion") != SPECVERSION:
        raise InvalidHeader(f"ce_specversion {attrs['ce_specversion']!r} is not {SPECVERSION}")
    content_type = attrs.get("content-type", DATA_CONTENT_TYPE).split(";")[0].strip()
    if content_type != DATA_CONTENT_TYPE:
        raise InvalidHeader(f"content-type {content_type!r} is not {DATA_CONTENT_TYPE}")
    return Attributes(attrs, registry.resolve(_required(attrs, "type")))


def decode(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]],
    registry: MessageRegistry = DEFAULT_REGISTRY,
) -> Envelope[Message]:
    return decode_value(read_attributes(headers, registry), value, registry)


def decode_value(
    attributes: Attributes, value: bytes | None, registry: MessageRegistry = DEFAULT_REGISTRY
) -> Envelope[Message]:
    """The rest of `decode`, after `read_attributes`: the other attributes and the value.
    The envelope and its message are validated in one call; errors in the message are
    reported before errors in the envelope's attributes."""
    attrs, cls = attributes
    version = _positive_int(attrs.get(f"ce_{EXT_SCHEMA_VERSION}", "1"), EXT_SCHEMA_VERSION)
    time = _timestamp(_required(attrs, "time"))
    data = _json_object(value)
    try:
        data = registry.upcast(cls, version, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractViolation(f"{cls.__name__} v{version} could not be upcast: {exc!r}", []) from None
    # the saga id defaults to the order id (an upcaster's output may not even be a dict:
    # validation below says so)
    order_id = data.get("order_id") if isinstance(data, dict) else None
    saga_id = attrs.get(f"ce_{EXT_SAGA_ID}") or (order_id if isinstance(order_id, str) else None)
    try:
        envelope = _envelope_of(cls).model_validate(
            {
                "id": _required(attrs, "id"),
                "source": _required(attrs, "source"),
                "time": time,
                "saga_id": saga_id,
                "causation_id": attrs.get(f"ce_{EXT_CAUSATION_ID}") or None,
                "idempotency_key": attrs.get(f"ce_{EXT_IDEMPOTENCY_KEY}") or None,
                "traceparent": attrs.get("traceparent") or None,
                "tracestate": attrs.get("tracestate") or None,
                "data": data,
            }
        )
    except ValidationError as exc:
        raise _envelope_violation(cls.__name__, exc) from None
    subject = attrs.get("ce_subject")
    if subject is not None and subject != envelope.data.key:
        raise InvalidHeader(f"ce_subject {subject!r} does not match order id {envelope.data.key!r}")
    return envelope


@functools.cache
def _envelope_of(cls: type[Message]) -> type[Envelope[Message]]:
    """`Envelope[cls]`, parametrised once per class (pydantic looks the class up on every
    subscript); its instances equal `Envelope[Message]` ones with the same fields."""
    return Envelope[cls]  # type: ignore[valid-type]


def _required(attrs: dict[str, str], name: str) -> str:
    found = attrs.get(f"ce_{name}")
    if not found:
        raise MissingHeader(f"missing CloudEvents header ce_{name}")
    return found


def parse_message(type_name: str, payload: Any, registry: MessageRegistry = DEFAULT_REGISTRY) -> Message:
    """Build a message from a type name (`PlaceOrder` or `io.sagaline.PlaceOrder`) and a
    JSON-like payload; `UnknownMessageType` / `ContractViolation` (with field paths) otherwise."""
    full = type_name if type_name.startswith(TYPE_PREFIX) else TYPE_PREFIX + type_name
    return _validated(registry.resolve(full), payload)


def _validated(cls: type[Message], data: Any) -> Message:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise _violation(cls.__name__, exc) from None


def _violation(what: str, exc: ValidationError) -> ContractViolation:
    return _contract_violation(what, [(_path(e["loc"]), e["msg"]) for e in exc.errors()])


def _envelope_violation(message_name: str, exc: ValidationError) -> ContractViolation:
    """The message's errors (paths inside it) if it has any, else the envelope's."""
    errors = exc.errors()
    in_data = [(_path(e["loc"][1:]), e["msg"]) for e in errors if e["loc"][:1] == ("data",)]
    if in_data:
        return _contract_violation(message_name, in_data)
    return _contract_violation("envelope", [(_path(e["loc"]), e["msg"]) for e in errors])


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def _contract_violation(what: str, errors: list[tuple[str, str]]) -> ContractViolation:
    summary = "; ".join(f"{path}: {msg}" for path, msg in errors[:5])
    return ContractViolation(f"{what} failed validation: {summary}", errors)


def _json_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise NotJson("record has no value (tombstone)")
    try:  # pydantic's parser (a quarter of the json module's time); nesting is bounded, not recursive
        parsed = from_json(value[3:] if value.startswith(_BOM) else value)
    except ValueError as exc:
        raise NotJson(f"value is not JSON in UTF-8: {exc}") from None
    if not isinstance(parsed, dict):
        raise NotJson(f"value is JSON {type(parsed).__name__}, not an object")
    return parsed


def _positive_int(text: str, name: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) < 1:
        raise InvalidHeader(f"ce_{name} {text!r} is not a positive integer")
    return int(text)


def _timestamp(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidHeader(f"ce_time {text!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidHeader(f"ce_time {text!r} has no UTC offset")
    return parsed


__all__ = [
    "Attributes",
    "DecodeError",
    "Headers",
    "Record",
    "decode",
    "decode_value",
    "encode",
    "header_map",
    "parse_message",
    "read_attributes",
]
