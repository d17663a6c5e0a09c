"""Event ids: UUIDv7 (RFC 9562) for events, so that they are ordered by the time they were
made; name-based (UUIDv5) for requests, so that a retried request keeps its id."""

from __future__ import annotations

import time
import uuid

from schemas.envelope import Envelope, new_event_id, request_event_id
from schemas.messages import OrderConfirmed, PlaceOrder
from schemas.values import LineItem, Money


def _unix_ms(event_id: str) -> int:
    return uuid.UUID(event_id).int >> 80


def test_an_event_id_is_a_uuid7_that_carries_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(1_000)]
    after = time.time_ns() // 1_000_000
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id  # the canonical lower-case text form
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= _unix_ms(event_id) <= after
    assert len(set(ids)) == len(ids)


def test_event_ids_made_in_later_milliseconds_sort_after_earlier_ones_as_text() -> None:
    """What keeps index inserts at the right edge: text order is time order across ms."""
    ids: list[str] = []
    for _ in range(5):
        ids.append(new_event_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    assert len({_unix_ms(i) for i in ids}) == len(ids)


def test_the_random_bits_differ_within_one_millisecond() -> None:
    ids = [new_event_id() for _ in range(200)]
    same_ms = [i for i in ids if _unix_ms(i) == _unix_ms(ids[0])]
    assert len({uuid.UUID(i).int & ((1 << 74) - 1) for i in same_ms}) == len(same_ms)


def test_events_get_uuid7_ids_and_requests_keep_their_name_based_ids() -> None:
    item = LineItem(sku="SKU-1", quantity=1, unit_price_minor=100)
    request = PlaceOrder(
        order_id="o-1", idempotency_key="key-12345", customer_id="c-1", currency="EUR", items=[item]
    )
    placed = Envelope.new(request, "/test")
    assert placed.id == request_event_id(request) == Envelope.new(request, "/test").id
    assert uuid.UUID(placed.id).version == 5
    total = Money(amount_minor=100, currency="EUR")
    confirmed = Envelope.new(OrderConfirmed(order_id="o-1", total=total), "/test", caused_by=placed)
    assert uuid.UUID(confirmed.id).version == 7
