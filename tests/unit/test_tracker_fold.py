"""The tracker's projection, with no I/O: events of one saga arrive from four topics in any
order; the saga's status only moves forward and ends where the order service put it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from sagas.tracker import OPEN_STATUSES, STATUS_ORDER, TERMINAL_STATUSES, SagaRow, fold, open_status_sql
from schemas import messages as m
from schemas.envelope import Envelope
from schemas.values import LineItem, Money, StockLine

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EUR = Money(amount_minor=500, currency="EUR")
LINES = [StockLine(sku="mug", quantity=1)]


def _envelope(message: m.Message, second: int) -> Envelope[m.Message]:
    return Envelope(source="/test", saga_id="saga-1", time=T0 + timedelta(seconds=second), data=message)


def confirmed_saga() -> list[Envelope[m.Message]]:
    """The happy path, in the order it happens."""
    messages: list[m.Message] = [
        m.OrderPlaced(
            order_id="o-1",
            customer_id="c-1",
            items=[LineItem(sku="mug", quantity=1, unit_price_minor=500)],
            total=EUR,
        ),
        m.PaymentCompleted(
            order_id="o-1", payment_id="o-1:charge", customer_id="c-1", amount=EUR, lines=LINES
        ),
        m.StockReserved(order_id="o-1", lines=LINES),
        m.OrderConfirmed(order_id="o-1", total=EUR),
    ]
    return [_envelope(message, n) for n, message in enumerate(messages)]


def _fold_all(envelopes: list[Envelope[m.Message]]) -> list[SagaRow]:
    row: SagaRow | None = None
    seen = []
    for envelope in envelopes:
        row = fold(row, envelope)
        seen.append(row)
    return seen


@settings(max_examples=100, deadline=None)
@given(st.permutations(confirmed_saga()))
def test_any_arrival_order_ends_confirmed_and_status_never_moves_back(
    envelopes: list[Envelope[m.Message]],
) -> None:
    rows = _fold_all(envelopes)
    ranks = [STATUS_ORDER.index(r.status) for r in rows]
    assert ranks == sorted(ranks)
    final = rows[-1]
    assert (final.status, final.step) == ("CONFIRMED", "done")
    assert (final.started_at, final.updated_at) == (T0, T0 + timedelta(seconds=3))
    assert final.saga_id == "saga-1"


def test_a_rejection_of_a_reused_order_id_leaves_the_running_saga_alone() -> None:
    placed = confirmed_saga()[0]
    rejected = _envelope(
        m.OrderRejected(order_id="o-1", idempotency_key="key-00001", reason="order id reused"), 5
    )
    row = _fold_all([placed, rejected])[-1]
    assert (row.status, row.step, row.reason) == ("PENDING_PAYMENT", "payment: charging", None)
    assert row.last_event == "OrderRejected"


def test_a_rejection_ends_a_saga_that_never_started() -> None:
    rejected = _envelope(
        m.OrderRejected(order_id="o-1", idempotency_key="key-00001", reason="order id reused"), 0
    )
    row = _fold_all([rejected])[-1]
    assert (row.status, row.step, row.reason) == ("REJECTED", "done", "order id reused")


def compensated_saga() -> list[Envelope[m.Message]]:
    """Charged, then out of stock: refunded and cancelled, in the order it happens."""
    confirmed = confirmed_saga()
    messages: list[m.Message] = [
        confirmed[0].data,
        confirmed[1].data,
        m.StockRejected(order_id="o-1", reason="not enough mug", missing=LINES),
        m.PaymentRefunded(order_id="o-1", payment_id="o-1:charge", amount=EUR, reason="out of stock"),
        m.OrderCancelled(order_id="o-1", reason="out_of_stock"),
    ]
    return [_envelope(message, n) for n, message in enumerate(messages)]


@settings(max_examples=200, deadline=None)
@given(st.permutations(compensated_saga()))
def test_any_arrival_order_ends_cancelled_with_the_cancellation_reason(
    envelopes: list[Envelope[m.Message]],
) -> None:
    """An event that arrives after the terminal one (another topic, a later batch) cannot
    replace the saga's reason, step or last event."""
    final = _fold_all(envelopes)[-1]
    assert (final.status, final.step, final.reason, final.last_event) == (
        "CANCELLED",
        "done",
        "out_of_stock",
        "OrderCancelled",
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=3).flatmap(lambda n: st.permutations(confirmed_saga()[:n])))
def test_an_open_saga_shows_the_step_of_its_latest_event_whatever_the_arrival_order(
    envelopes: list[Envelope[m.Message]],
) -> None:
    final = _fold_all(envelopes)[-1]
    latest = max(envelopes, key=lambda e: e.time)
    in_order = _fold_all(sorted(envelopes, key=lambda e: e.time))[-1]
    assert final.last_event == type(latest.data).__name__
    assert (final.step, final.reason, final.status) == (in_order.step, in_order.reason, in_order.status)


def test_a_status_is_either_open_or_terminal_and_the_open_ones_are_named_in_sql() -> None:
    assert set(OPEN_STATUSES) | set(TERMINAL_STATUSES) == set(STATUS_ORDER)
    assert not set(OPEN_STATUSES) & set(TERMINAL_STATUSES)
    assert open_status_sql() == "status IN ('REQUESTED', 'PENDING_PAYMENT', 'AWAITING_STOCK', 'CANCELLING')"
