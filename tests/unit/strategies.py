"""Hypothesis strategies that build valid messages of every type."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from schemas import messages as m
from schemas.envelope import Envelope
from schemas.values import LineItem, Money, StockLine

ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z")
skus = st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z")
currencies = st.sampled_from(["EUR", "USD", "GBP", "JPY", "CHF"])
minor = st.integers(min_value=0, max_value=10**12)
quantities = st.integers(min_value=1, max_value=10_000)
reasons = st.text(min_size=1, max_size=500)
keys = st.from_regex(r"\A[\x21-\x7e]{8,128}\Z")
money = st.builds(Money, amount_minor=minor, currency=currencies)


def _unique_by_sku(items: list[Any]) -> bool:
    return len({i.sku for i in items}) == len(items)


line_items = st.lists(
    st.builds(LineItem, sku=skus, quantity=quantities, unit_price_minor=minor), min_size=1, max_size=5
).filter(_unique_by_sku)
stock_lines = st.lists(st.builds(StockLine, sku=skus, quantity=quantities), min_size=1, max_size=5)

MESSAGE_STRATEGIES: dict[type[m.Message], st.SearchStrategy[Any]] = {
    m.PlaceOrder: st.builds(
        m.PlaceOrder,
        order_id=ids,
        idempotency_key=keys,
        customer_id=ids,
        currency=currencies,
        items=line_items,
    ),
    m.CancelOrder: st.builds(m.CancelOrder, order_id=ids, idempotency_key=keys, reason=reasons),
    m.OrderPlaced: st.builds(m.OrderPlaced, order_id=ids, customer_id=ids, items=line_items, total=money),
    m.OrderConfirmed: st.builds(m.OrderConfirmed, order_id=ids, total=money),
    m.OrderCancelled: st.builds(
        m.OrderCancelled,
        order_id=ids,
        reason=st.sampled_from(["payment_declined", "out_of_stock", "customer_request", "deadline_expired"]),
        detail=st.text(max_size=500),
    ),
    m.PaymentCompleted: st.builds(
        m.PaymentCompleted, order_id=ids, payment_id=ids, customer_id=ids, amount=money, lines=stock_lines
    ),
    m.OrderRejected: st.builds(m.OrderRejected, order_id=ids, idempotency_key=keys, reason=reasons),
    m.OrderCancelling: st.builds(
        m.OrderCancelling,
        order_id=ids,
        reason=st.sampled_from(["payment_declined", "out_of_stock", "customer_request", "deadline_expired"]),
        detail=st.text(max_size=500),
    ),
    m.PaymentFailed: st.builds(m.PaymentFailed, order_id=ids, customer_id=ids, amount=money, reason=reasons),
    m.PaymentRefunded: st.builds(
        m.PaymentRefunded, order_id=ids, payment_id=ids, amount=money, reason=reasons
    ),
    m.StockReserved: st.builds(m.StockReserved, order_id=ids, lines=stock_lines),
    m.StockRejected: st.builds(m.StockRejected, order_id=ids, reason=reasons, missing=stock_lines),
    m.StockReleased: st.builds(m.StockReleased, order_id=ids, lines=stock_lines),
}

any_message = st.one_of(*MESSAGE_STRATEGIES.values())


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope[m.Message]:
    data = draw(any_message)
    caused = draw(st.booleans())
    return Envelope[m.Message](
        source=draw(st.sampled_from(["/sagaline/order", "/sagaline/payment", "/upstream/shop"])),
        saga_id=draw(ids),
        causation_id=draw(ids) if caused else None,
        idempotency_key=getattr(data, "idempotency_key", None),
        traceparent=draw(st.none() | st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
        data=data,
    )
