"""The whole inbound path on arbitrary bytes: what the worker does with a record before the
database (trust boundary, decode, triage), the lane record it builds when the record fails,
and what the DLQ indexer reads and stores of a dead letter. Pure: no I/O."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers import lanes as h
from consumers.errors import classify
from consumers.handlers import HandlerContext, Handlers
from consumers.lanes import Failure, Lanes, failed_record
from consumers.unit_of_work import InboundRecord, triage
from dlq.record import headers_from_json, headers_to_json, parse
from schemas import messages as m
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.values import LineItem, Money
from tests.unit.strategies import envelopes

LANES = Lanes("payment", (1.0, 10.0, 60.0))
TOPICS = ["orders.events", "payment.retry.1", "payment.retry.3", "payment.dlt", "other.retry.1"]


async def _noop(ctx: HandlerContext, message: Any) -> None:
    return None


HANDLERS = Handlers()
HANDLERS.register(m.OrderPlaced, _noop)

_names = st.sampled_from(
    [*h.LANE_HEADERS, "ce_id", "ce_type", "ce_specversion", "ce_time", "ce_source", "content-type", "x"]
) | st.text(max_size=20)
_forged = st.sampled_from(
    [
        struct.pack(">q", 2**62),
        struct.pack(">q", -(2**62)),
        struct.pack(">i", -1),
        "²".encode() * 50,
        b"9" * 5000,
        b"\x00",
        b"\xff\xfe",
        b"9999-12-31T23:59:59-23:00",
        b"[link=https://evil.example]click[/link]",
    ]
)
_values = st.none() | st.binary(max_size=64) | _forged | st.just(b"x" * 100_000)
_headers = st.lists(st.tuples(_names, _values), max_size=12)


@st.composite
def records(draw: st.DrawFn) -> InboundRecord:
    """Arbitrary records, and valid events with arbitrary extra (often forged) headers."""
    topic = draw(st.sampled_from(TOPICS))
    if draw(st.booleans()):
        valid = encode(draw(envelopes()))
        key: bytes | None = valid.key
        value: bytes | None = valid.value
        headers = [*valid.headers, *draw(_headers)]
    else:
        key = draw(st.none() | st.binary(max_size=64))
        value = draw(st.none() | st.binary(max_size=256))
        headers = draw(_headers)
    return InboundRecord(
        topic,
        draw(st.integers(0, 2**31 - 1)),
        draw(st.integers(0, 2**63 - 1)),
        draw(st.integers(-1, 2**50)),
        key,
        value,
        headers,
    )


def _storable_text(value: object) -> bool:
    return not isinstance(value, str) or "\x00" not in value


@settings(max_examples=400, deadline=None)
@given(records())
def test_any_record_has_an_outcome_and_its_dead_letter_is_indexable(record: InboundRecord) -> None:
    outcome = triage(record, LANES, HANDLERS)
    assert outcome.kind in ("applied", "ignored", "dead_letter")
    if outcome.kind == "dead_letter":
        assert outcome.failure is not None
        assert outcome.failure.failure_class == "permanent"

    now_ms = datetime.now(UTC).timestamp() * 1000
    due = LANES.due_at(record.topic, list(record.headers), now_ms)
    assert due <= now_ms + LANES.delay_of(record.topic) * 1000

    # Whatever the outcome, the record can fail later (a handler bug): its lane record builds.
    failure = outcome.failure or Failure(ValueError("boom"), classify(ValueError()), datetime.now(UTC))
    for lane in ("retry", "dlt"):
        lane_record = failed_record(
            record.key, record.value, list(record.headers), origin=outcome.origin, group=LANES.group,
            failure=failure, saga_id=outcome.envelope.saga_id if outcome.envelope else None,
            lane=lane, due_ms=int(now_ms) if lane == "retry" else None,  # type: ignore[arg-type]
        )  # fmt: skip
        names = [name for name, _ in lane_record.headers]
        assert all(names.count(name) == 1 for name in h.LANE_HEADERS if name in names)
        _index(LANES.dlt, lane_record.key, lane_record.headers)

    # The same bytes written straight to a dead-letter topic by someone else.
    _index("payment.dlt", record.key, list(record.headers))


def _index(topic: str, key: bytes | None, headers: list[tuple[str, bytes | None]]) -> None:
    """What the indexer does with a record: parse, and store headers as jsonb."""
    fields = parse(topic, key, headers)
    for value in vars(fields).values():
        assert _storable_text(value)
        if isinstance(value, datetime):
            assert value.tzinfo is not None
    assert fields.source_partition is None or 0 <= fields.source_partition < 2**31
    assert fields.replay_of is None or fields.replay_of < 2**63
    stored = json.dumps(headers_to_json(headers))
    assert "\\u0000" not in stored  # jsonb refuses NUL
    assert headers_from_json(json.loads(stored)) == headers


def _event(message: m.Message) -> tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]:
    record = encode(Envelope.new(message, "/tests"))
    return record.key, record.value, list(record.headers)


_TOTAL = Money(amount_minor=100, currency="EUR")
_CONFIRMED = m.OrderConfirmed(order_id="order-1", total=_TOTAL)


def test_a_type_the_group_does_not_handle_is_ignored_from_its_headers_without_reading_the_value() -> None:
    key, value, headers = _event(_CONFIRMED)
    for body in (value, b"{not json", None):
        outcome = triage(InboundRecord("orders.events", 0, 7, 0, key, body, headers), LANES, HANDLERS)
        assert (outcome.kind, outcome.envelope, outcome.failure) == ("ignored", None, None)


def test_a_handled_type_with_a_malformed_value_is_a_dead_letter() -> None:
    placed = m.OrderPlaced(
        order_id="order-1",
        customer_id="c-1",
        items=[LineItem(sku="s", quantity=1, unit_price_minor=100)],
        total=_TOTAL,
    )
    key, value, headers = _event(placed)
    assert (
        triage(InboundRecord("orders.events", 0, 7, 0, key, value, headers), LANES, HANDLERS).kind
        == "applied"
    )
    outcome = triage(InboundRecord("orders.events", 0, 7, 0, key, b"{not json", headers), LANES, HANDLERS)
    assert outcome.kind == "dead_letter"
    assert outcome.failure is not None
    assert type(outcome.failure.exc).__name__ == "NotJson"


def test_headers_that_do_not_name_a_known_type_are_a_dead_letter_whatever_the_group_handles() -> None:
    key, value, headers = _event(_CONFIRMED)
    for name, bad in (
        ("ce_type", b"io.sagaline.NoSuchThing"),
        ("ce_specversion", b"0.3"),
        ("content-type", b"text/xml"),
    ):
        forged = [(n, bad if n == name else v) for n, v in headers]
        outcome = triage(InboundRecord("orders.events", 0, 7, 0, key, value, forged), LANES, HANDLERS)
        assert outcome.kind == "dead_letter", name
