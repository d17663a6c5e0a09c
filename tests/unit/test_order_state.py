"""The order's decisions, with no I/O: every path of the saga, late and out-of-order events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from consumers.errors import PermanentError
from sagas.order import Orders, decide_batch
from sagas.order_state import Order, Timeouts, cancel, decide, expire, place
from schemas import messages as m
from schemas.values import LineItem, Money, StockLine

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
TIMEOUTS = Timeouts(payment=timedelta(seconds=30), stock=timedelta(seconds=20))
ITEMS = [LineItem(sku="mug", quantity=2, unit_price_minor=1250)]
EUR25 = Money(amount_minor=2500, currency="EUR")


def request(order_id: str = "o-1", key: str = "key-00001", quantity: int = 2) -> m.PlaceOrder:
    items = [LineItem(sku="mug", quantity=quantity, unit_price_minor=1250)]
    return m.PlaceOrder(
        order_id=order_id, idempotency_key=key, customer_id="c-1", currency="EUR", items=items
    )


def placed_order() -> Order:
    decision = place(request(), None, None, NOW, TIMEOUTS)
    assert decision.state is not None
    return decision.state


def run(order: Order, *messages: m.Message) -> tuple[Order, list[str]]:
    """Apply messages in turn; returns the final state and the names of emitted events."""
    emitted: list[str] = []
    for message in messages:
        decision = decide(order, message, NOW, TIMEOUTS)
        order = decision.state or order
        emitted += [type(e).__name__ for e in decision.events]
    return order, emitted


PAID = m.PaymentCompleted(
    order_id="o-1",
    payment_id="o-1:charge",
    customer_id="c-1",
    amount=EUR25,
    lines=[StockLine(sku="mug", quantity=2)],
)
DECLINED = m.PaymentFailed(order_id="o-1", customer_id="c-1", amount=EUR25, reason="insufficient funds")
REFUNDED = m.PaymentRefunded(order_id="o-1", payment_id="o-1:charge", amount=EUR25, reason="x")
RESERVED = m.StockReserved(order_id="o-1", lines=[StockLine(sku="mug", quantity=2)])
REJECTED = m.StockRejected(order_id="o-1", reason="not enough stock")
RELEASED = m.StockReleased(order_id="o-1", lines=[StockLine(sku="mug", quantity=2)])
CANCEL = m.CancelOrder(order_id="o-1", idempotency_key="cancel-0001", reason="changed my mind")


def test_placing_an_order_emits_order_placed_with_the_total_and_a_payment_deadline() -> None:
    decision = place(request(), None, None, NOW, TIMEOUTS)
    assert decision.state is not None
    assert decision.state.status == "PENDING_PAYMENT"
    assert decision.state.deadline_at == NOW + TIMEOUTS.payment
    [event] = decision.events
    assert isinstance(event, m.OrderPlaced)
    assert event.total == EUR25


def test_the_same_key_and_body_is_the_original_order_and_a_different_body_is_rejected() -> None:
    original = placed_order()
    assert place(request(), original, original, NOW, TIMEOUTS).events == ()
    [repeat] = place(request(order_id="o-2"), original, None, NOW, TIMEOUTS).events  # same request, new id
    assert isinstance(repeat, m.OrderRejected)
    assert repeat.order_id == "o-2"
    assert "a repeat of order 'o-1'" in repeat.reason
    [rejected] = place(request(quantity=3), original, original, NOW, TIMEOUTS).events
    assert isinstance(rejected, m.OrderRejected)
    assert "used for a different request" in rejected.reason
    [taken] = place(request(key="other-key-1"), None, original, NOW, TIMEOUTS).events
    assert isinstance(taken, m.OrderRejected)
    assert "already exists" in taken.reason


def test_happy_path() -> None:
    order, events = run(placed_order(), PAID, RESERVED)
    assert (order.status, events) == ("CONFIRMED", ["OrderConfirmed"])


def test_payment_declined_cancels_at_once() -> None:
    order, events = run(placed_order(), DECLINED)
    assert (order.status, order.cancel_reason, events) == (
        "CANCELLED",
        "payment_declined",
        ["OrderCancelled"],
    )


def test_stock_rejected_waits_for_the_refund_then_cancels() -> None:
    order, events = run(placed_order(), PAID, REJECTED)
    assert (order.status, events) == ("CANCELLING", [])
    order, events = run(order, REFUNDED)
    assert (order.status, order.cancel_reason, events) == ("CANCELLED", "out_of_stock", ["OrderCancelled"])


def test_customer_cancellation_before_payment_compensates_whatever_payment_answers() -> None:
    order, events = run(placed_order(), CANCEL)
    assert (order.status, events) == ("CANCELLING", ["OrderCancelling"])
    declined, events = run(order, DECLINED)
    assert (declined.status, events) == ("CANCELLED", ["OrderCancelled"])
    charged, events = run(order, PAID, REFUNDED)
    assert (charged.status, events) == ("CANCELLING", [])  # inventory has not answered yet
    done, events = run(charged, RESERVED, RELEASED)
    assert (done.status, done.cancel_reason, events) == ("CANCELLED", "customer_request", ["OrderCancelled"])


def test_customer_cancellation_after_payment_and_after_reservation() -> None:
    after_payment, events = run(placed_order(), PAID, CANCEL)
    assert (after_payment.status, events) == ("CANCELLING", ["OrderCancelling"])
    done, events = run(after_payment, REJECTED, REFUNDED)
    assert (done.status, events) == ("CANCELLED", ["OrderCancelled"])

    confirmed, _ = run(placed_order(), PAID, RESERVED)
    order, events = run(confirmed, CANCEL)
    assert (order.status, events) == ("CANCELLING", ["OrderCancelling"])
    order, events = run(order, RELEASED, REFUNDED)
    assert (order.status, events) == ("CANCELLED", ["OrderCancelled"])


def test_deadlines_cancel_open_orders_only_when_due() -> None:
    order = placed_order()
    assert expire(order, NOW + timedelta(seconds=29)).state is None
    expired = expire(order, NOW + timedelta(seconds=31))
    assert expired.state is not None
    assert (expired.state.status, expired.state.cancel_reason) == ("CANCELLING", "deadline_expired")
    assert [type(e).__name__ for e in expired.events] == ["OrderCancelling"]
    confirmed, _ = run(order, PAID, RESERVED)
    assert expire(confirmed, NOW + timedelta(days=1)).state is None


def test_a_late_payment_after_the_deadline_is_refunded_before_the_order_ends() -> None:
    expired = expire(placed_order(), NOW + timedelta(minutes=1)).state
    assert expired is not None
    order, events = run(expired, PAID)
    assert (order.status, events) == ("CANCELLING", [])
    order, events = run(order, RESERVED, REFUNDED, RELEASED)
    assert (order.status, order.cancel_reason, events) == (
        "CANCELLED",
        "deadline_expired",
        ["OrderCancelled"],
    )


def test_cancelling_twice_or_after_the_end_changes_nothing() -> None:
    order, _ = run(placed_order(), CANCEL)
    assert decide(order, CANCEL, NOW, TIMEOUTS).state is None
    cancelled, _ = run(placed_order(), DECLINED)
    assert cancel(cancelled, "customer_request").state is None


def test_refund_and_release_arriving_in_either_order_end_the_same() -> None:
    start = replace(
        placed_order(), status="CANCELLING", cancel_reason="customer_request", payment="completed"
    )
    a, _ = run(start, RESERVED, RELEASED, REFUNDED)
    b, _ = run(start, REFUNDED, RESERVED, RELEASED)
    assert a.status == b.status == "CANCELLED"


def test_answers_overtaken_by_a_retry_lane_never_move_the_order_backwards() -> None:
    start, _ = run(placed_order(), CANCEL)
    # the refund arrives before the charge it refunds, the release before the reservation
    order, events = run(start, REFUNDED, PAID, RELEASED, RESERVED)
    assert (order.payment, order.stock) == ("refunded", "released")
    assert (order.status, events) == ("CANCELLED", ["OrderCancelled"])


def test_stock_answers_overtaking_the_payment_answer_still_confirm_or_cancel() -> None:
    order, events = run(placed_order(), RESERVED, PAID)
    assert (order.status, events) == ("CONFIRMED", ["OrderConfirmed"])
    order, events = run(placed_order(), REJECTED, PAID)
    assert (order.status, order.cancel_reason, events) == ("CANCELLING", "out_of_stock", [])
    order, events = run(order, REFUNDED)
    assert (order.status, events) == ("CANCELLED", ["OrderCancelled"])


def test_an_order_whose_cancellation_overtook_it_opens_cancelled_and_reaches_no_participant() -> None:
    decision = place(request(), None, None, NOW, TIMEOUTS, cancelled_early=True)
    assert decision.state is not None
    assert (decision.state.status, decision.state.cancel_reason) == ("CANCELLED", "customer_request")
    assert [type(e).__name__ for e in decision.events] == ["OrderCancelled"]  # no OrderPlaced
    original = placed_order()  # a retry of a request already placed stays what it was
    assert place(request(), original, original, NOW, TIMEOUTS, cancelled_early=True).events == ()


def test_a_batch_decides_each_message_on_what_the_ones_before_it_decided() -> None:
    """decide_batch (the order service's batch handler, without its I/O): a cancellation that
    overtook its order, a repeat under another id and a payment, all in one batch."""
    repeat = request(order_id="o-2")  # same key and body as o-1's request
    lines = [StockLine(sku="mug", quantity=2)]
    paid = m.PaymentCompleted(
        order_id="o-1", payment_id="o-1:charge", customer_id="c-1", amount=EUR25, lines=lines
    )
    early = m.CancelOrder(order_id="o-3", idempotency_key="key-00003")
    late = request(order_id="o-3", key="key-00003")
    orders = Orders()
    decided = decide_batch(orders, [request(), repeat, paid, early, late], NOW, TIMEOUTS)
    assert [[type(e).__name__ for e in events] for events in decided.events] == [
        ["OrderPlaced"],
        ["OrderRejected"],
        [],
        [],
        ["OrderCancelled"],
    ]
    assert {k: o.status for k, o in decided.changed.items()} == {"o-1": "AWAITING_STOCK", "o-3": "CANCELLED"}
    assert decided.early == {"o-3": "customer request"}

    unknown = m.StockReserved(order_id="o-404", lines=[StockLine(sku="mug", quantity=1)])
    with pytest.raises(PermanentError, match="unknown order 'o-404'"):
        decide_batch(orders, [unknown], NOW, TIMEOUTS)
