"""The payment and inventory participants' decisions, with no I/O: deliveries shuffled across
topics, duplicated and split into arbitrary batches must keep money and stock exact and
answer every order exactly once.

The services apply `decide` per batch to the rows they loaded and save what it returns; here
an in-memory store plays the rows, so hypothesis can try thousands of delivery orders."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sagas import inventory, payment
from schemas import messages as m
from schemas.values import LineItem, Money, StockLine

CUSTOMERS = {"c-1": ("EUR", 10_000), "c-2": ("EUR", 3_000), "c-3": ("USD", 50_000)}
SKUS = {"mug": 5, "pen": 12, "ink": 0}


def _batches(draw: st.DrawFn, messages: list[Any]) -> list[list[Any]]:
    """Cut the delivery sequence into batches of random sizes (one message each, at most)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(len(messages) - 1, 1)), max_size=len(messages))))
    bounds = [0, *[c for c in cuts if c < len(messages)], len(messages)]
    return [messages[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def payment_deliveries(draw: st.DrawFn) -> tuple[list[m.OrderPlaced], list[list[Any]]]:
    orders = []
    for n in range(draw(st.integers(1, 8))):
        customer = draw(st.sampled_from([*CUSTOMERS, "c-unknown"]))
        currency = draw(st.sampled_from(["EUR", "USD"]))
        price = draw(st.integers(0, 6_000))
        items = [LineItem(sku="mug", quantity=1, unit_price_minor=price)]
        orders.append(
            m.OrderPlaced(
                order_id=f"o-{n}",
                customer_id=customer,
                items=items,
                total=Money(amount_minor=price, currency=currency),
            )
        )
    messages: list[Any] = []
    for placed in orders:
        messages += [placed] * draw(st.integers(1, 2))  # a redelivery the inbox missed
        compensation = draw(st.sampled_from(["none", "stock", "cancel", "both"]))
        if compensation in ("stock", "both"):
            messages.append(m.StockRejected(order_id=placed.order_id, reason="short"))
        if compensation in ("cancel", "both"):
            messages.append(m.OrderCancelling(order_id=placed.order_id, reason="customer_request"))
    shuffled = draw(st.permutations(messages))  # retry lanes and topics reorder anything
    return orders, _batches(draw, list(shuffled))


def _run_payment(
    batches: Sequence[Sequence[Any]],
) -> tuple[payment.Decisions, dict[str, Any], dict[str, Any]]:
    """Apply batches in turn to an in-memory store; returns every event (in order) and the
    final payments and accounts."""
    payments: dict[str, payment.Payment] = {}
    accounts = {c: payment.Account(c, cur, bal) for c, (cur, bal) in CUSTOMERS.items()}
    events = payment.Decisions()
    for batch in batches:
        decided = payment.decide(payments, accounts, batch)
        payments.update(decided.payments)
        accounts.update(decided.accounts)
        events.events += decided.events
    return events, payments, accounts


@settings(max_examples=300, deadline=None)
@given(payment_deliveries())
def test_payment_keeps_money_exact_and_answers_every_order_once(
    delivery: tuple[list[m.OrderPlaced], list[list[Any]]],
) -> None:
    orders, batches = delivery
    decided, payments, accounts = _run_payment(batches)
    emitted = [e for events in decided.events for e in events]
    by_order: dict[str, Counter[str]] = {o.order_id: Counter() for o in orders}
    for event in emitted:
        by_order[event.order_id][type(event).__name__] += 1
    for placed in orders:
        answers = by_order[placed.order_id]
        # answered exactly once, charged at most once, refunded at most once and only if charged
        assert answers["PaymentCompleted"] + answers["PaymentFailed"] == 1, answers
        assert answers["PaymentRefunded"] <= answers["PaymentCompleted"]
        row = payments[placed.order_id]
        assert (row.status in ("charged", "refunded")) == (answers["PaymentCompleted"] == 1)
        assert (row.status == "refunded") == (answers["PaymentRefunded"] == 1)
    for customer, (_, initial) in CUSTOMERS.items():
        mine = [p for p in payments.values() if p.customer_id == customer]
        charged = sum(p.charged_minor for p in mine)
        refunded = sum(p.refunded_minor for p in mine)
        assert initial - accounts[customer].balance_minor == charged - refunded
        assert accounts[customer].balance_minor >= 0
    # the same deliveries one message at a time decide the same
    one_by_one = [[message] for batch in batches for message in batch]
    _, payments_1, accounts_1 = _run_payment(one_by_one)
    assert (payments_1, accounts_1) == (payments, accounts)


def test_a_cancellation_before_the_charge_voids_it_and_the_charge_declines() -> None:
    placed = m.OrderPlaced(
        order_id="o-1",
        customer_id="c-1",
        items=[LineItem(sku="mug", quantity=1, unit_price_minor=500)],
        total=Money(amount_minor=500, currency="EUR"),
    )
    decided, payments, accounts = _run_payment(
        [[m.OrderCancelling(order_id="o-1", reason="customer_request")], [placed]]
    )
    assert decided.events[0] == []
    [failed] = decided.events[1]
    assert isinstance(failed, m.PaymentFailed)
    assert failed.reason == "order cancelled before payment"
    assert payments["o-1"].status == "declined"
    assert accounts["c-1"].balance_minor == 10_000


@st.composite
def inventory_deliveries(draw: st.DrawFn) -> tuple[list[m.PaymentCompleted], list[list[Any]]]:
    paid = []
    for n in range(draw(st.integers(1, 8))):
        lines = [
            StockLine(sku=sku, quantity=draw(st.integers(1, 6)))
            for sku in draw(st.lists(st.sampled_from([*SKUS, "nope"]), min_size=1, max_size=3))
        ]
        paid.append(
            m.PaymentCompleted(
                order_id=f"o-{n}",
                payment_id=f"o-{n}:charge",
                customer_id="c-1",
                amount=Money(amount_minor=100, currency="EUR"),
                lines=lines,
            )
        )
    messages: list[Any] = []
    for event in paid:
        messages += [event] * draw(st.integers(1, 2))
        if draw(st.booleans()):
            messages.append(m.OrderCancelling(order_id=event.order_id, reason="deadline_expired"))
    shuffled = draw(st.permutations(messages))
    return paid, _batches(draw, list(shuffled))


def _run_inventory(
    batches: Sequence[Sequence[Any]],
) -> tuple[list[list[m.Message]], dict[str, Any], dict[str, Any]]:
    reservations: dict[str, inventory.Reservation] = {}
    stock = {sku: inventory.Stock(sku, available) for sku, available in SKUS.items()}
    events: list[list[m.Message]] = []
    for batch in batches:
        decided = inventory.decide(reservations, stock, batch)
        reservations.update(decided.reservations)
        stock.update(decided.stock)
        events += decided.events
    return events, reservations, stock


@settings(max_examples=300, deadline=None)
@given(inventory_deliveries())
def test_inventory_keeps_stock_exact_and_answers_every_paid_order_once(
    delivery: tuple[list[m.PaymentCompleted], list[list[Any]]],
) -> None:
    paid, batches = delivery
    events, reservations, stock = _run_inventory(batches)
    by_order: dict[str, Counter[str]] = {p.order_id: Counter() for p in paid}
    for event in (e for batch in events for e in batch):
        by_order[event.order_id][type(event).__name__] += 1
    for event in paid:
        answers = by_order[event.order_id]
        assert answers["StockReserved"] + answers["StockRejected"] == 1, answers
        assert answers["StockReleased"] <= answers["StockReserved"]
        status = reservations[event.order_id].status
        assert (status in ("reserved", "released")) == (answers["StockReserved"] == 1)
    held: Counter[str] = Counter()
    for reservation in reservations.values():
        if reservation.status == "reserved":
            for line in reservation.lines:
                held[line.sku] += line.quantity
    for sku, initial in SKUS.items():
        row = stock[sku]
        assert row.available >= 0
        assert initial - row.available == held[sku] == row.reserved - row.released
    one_by_one = [[message] for batch in batches for message in batch]
    _, reservations_1, stock_1 = _run_inventory(one_by_one)
    assert (reservations_1, stock_1) == (reservations, stock)


def test_a_line_repeated_in_one_order_is_checked_against_its_total() -> None:
    paid = m.PaymentCompleted(
        order_id="o-1",
        payment_id="o-1:charge",
        customer_id="c-1",
        amount=Money(amount_minor=100, currency="EUR"),
        lines=[StockLine(sku="mug", quantity=3), StockLine(sku="mug", quantity=3)],
    )
    [[rejected]], reservations, stock = _run_inventory([[paid]])
    assert isinstance(rejected, m.StockRejected)
    assert rejected.missing == [StockLine(sku="mug", quantity=1)]
    assert stock["mug"].available == 5
    assert reservations["o-1"].status == "rejected"
