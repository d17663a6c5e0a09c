"""The order's state machine: pure decisions, no I/O.

    PENDING_PAYMENT --PaymentCompleted--> AWAITING_STOCK --StockReserved--> CONFIRMED
    PENDING_PAYMENT --PaymentFailed--> CANCELLED (nothing to compensate)
    AWAITING_STOCK --StockRejected--> CANCELLING(out_of_stock)
    any open state --CancelOrder / deadline--> CANCELLING(reason)    (emits OrderCancelling)
    CONFIRMED --CancelOrder--> CANCELLING(customer_request)
    CANCELLING --compensations done--> CANCELLED                       (emits OrderCancelled)
    (none) --CancelOrder, then PlaceOrder--> CANCELLED                  (emits OrderCancelled only)

Retry lanes break per-key order, so a CancelOrder can overtake its PlaceOrder: the order
service remembers it, and the PlaceOrder then opens the order already cancelled, before
any participant heard of it — nothing is charged or reserved, nothing to compensate.

Compensations are done when the payment was declined, or when it was refunded and the
stock was rejected or released. Participants answer every order exactly once with a
definitive event (payment: completed or failed, then refunded if cancelled; inventory:
reserved or rejected, then released if cancelled), so late and out-of-order events move
the order forward deliberately and never resurrect it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from schemas import messages as m
from schemas.values import LineItem, Money

Status = Literal["PENDING_PAYMENT", "AWAITING_STOCK", "CONFIRMED", "CANCELLING", "CANCELLED"]
PaymentState = Literal["pending", "completed", "failed", "refunded"]
StockState = Literal["pending", "reserved", "rejected", "released"]
TERMINAL: frozenset[str] = frozenset({"CONFIRMED", "CANCELLED"})
# A participant's answers can reach us out of order (a retry lane delays one): what we know
# about payment and stock only ever moves forward.
_PAYMENT_RANK = {"pending": 0, "completed": 1, "failed": 2, "refunded": 2}
_STOCK_RANK = {"pending": 0, "reserved": 1, "rejected": 2, "released": 2}


@dataclass(frozen=True)
class Order:
    order_id: str
    idempotency_key: str
    request_hash: str
    customer_id: str
    currency: str
    items: tuple[LineItem, ...]
    status: Status
    payment: PaymentState = "pending"
    stock: StockState = "pending"
    cancel_reason: m.CancelReason | None = None
    deadline_at: datetime | None = None

    @property
    def total_minor(self) -> int:
        return sum(i.total_minor for i in self.items)

    @property
    def total(self) -> Money:
        return Money(amount_minor=self.total_minor, currency=self.currency)


@dataclass(frozen=True)
class Timeouts:
    payment: timedelta
    stock: timedelta


@dataclass(frozen=True)
class Decision:
    """The new state (None: nothing to store) and the events to emit."""

    state: Order | None
    events: tuple[m.Message, ...] = ()


def request_hash(command: m.PlaceOrder) -> str:
    """What makes two PlaceOrder requests "the same": everything but the order id."""
    body = command.model_dump_json(exclude={"order_id"})
    return hashlib.sha256(body.encode()).hexdigest()


def place(
    command: m.PlaceOrder,
    by_key: Order | None,
    by_id: Order | None,
    now: datetime,
    timeouts: Timeouts,
    cancelled_early: bool = False,
) -> Decision:
    """A new order — unless the idempotency key or the order id was used before. An order
    whose cancellation arrived first (`cancelled_early`) opens cancelled."""
    digest = request_hash(command)
    if by_key is not None:
        if by_key.request_hash == digest:
            if by_key.order_id == command.order_id:
                return Decision(None)  # a retry: the original order stands, nothing new happens
            # the same request under another order id: no second order, and an answer for this
            # id so that its saga ends (the tracker would otherwise show it requested forever)
            reason = f"a repeat of order {by_key.order_id!r} (same idempotency key and request)"
            return Decision(None, (_rejected(command, reason),))
        reason = f"idempotency key {command.idempotency_key!r} was used for a different request"
        return Decision(None, (_rejected(command, reason),))
    if by_id is not None:
        reason = f"order id {command.order_id!r} already exists with another idempotency key"
        return Decision(None, (_rejected(command, reason),))
    order = Order(
        order_id=command.order_id,
        idempotency_key=command.idempotency_key,
        request_hash=digest,
        customer_id=command.customer_id,
        currency=command.currency,
        items=tuple(command.items),
        status="PENDING_PAYMENT",
        deadline_at=now + timeouts.payment,
    )
    if cancelled_early:
        cancelled = replace(order, status="CANCELLED", cancel_reason="customer_request", deadline_at=None)
        return Decision(cancelled, (m.OrderCancelled(order_id=order.order_id, reason="customer_request"),))
    placed = m.OrderPlaced(
        order_id=order.order_id, customer_id=order.customer_id, items=list(order.items), total=order.total
    )
    return Decision(order, (placed,))


def _rejected(command: m.PlaceOrder, reason: str) -> m.OrderRejected:
    return m.OrderRejected(order_id=command.order_id, idempotency_key=command.idempotency_key, reason=reason)


def _paid(order: Order, state: PaymentState) -> Order:
    return replace(order, payment=state) if _PAYMENT_RANK[state] > _PAYMENT_RANK[order.payment] else order


def _stocked(order: Order, state: StockState) -> Order:
    return replace(order, stock=state) if _STOCK_RANK[state] > _STOCK_RANK[order.stock] else order


def decide(order: Order, message: m.Message, now: datetime, timeouts: Timeouts) -> Decision:
    """The order's reaction to a message about it. Payment and stock answers come from two
    topics, so either may arrive first: the state records what is known, then `_progress`
    decides from all of it."""
    match message:
        case m.PaymentCompleted():
            return _progress(_paid(order, "completed"), now, timeouts)
        case m.PaymentFailed():
            return _progress(_paid(order, "failed"), now, timeouts)
        case m.PaymentRefunded():
            return _progress(_paid(order, "refunded"), now, timeouts)
        case m.StockReserved():
            return _progress(_stocked(order, "reserved"), now, timeouts)
        case m.StockRejected():
            return _progress(_stocked(order, "rejected"), now, timeouts)
        case m.StockReleased():
            return _progress(_stocked(order, "released"), now, timeouts)
        case m.CancelOrder():
            return cancel(order, "customer_request", message.reason)
    return Decision(None)


def _progress(order: Order, now: datetime, timeouts: Timeouts) -> Decision:
    """Move an open order as far as what is known allows; a cancelling one ends when its
    compensations are done. Late answers to a cancelled order only complete the record."""
    if order.status in ("PENDING_PAYMENT", "AWAITING_STOCK"):
        if order.payment == "failed":
            return _settle(
                replace(order, status="CANCELLING", cancel_reason="payment_declined", deadline_at=None)
            )
        if order.payment in ("completed", "refunded"):
            if order.stock == "rejected":
                return _settle(
                    replace(order, status="CANCELLING", cancel_reason="out_of_stock", deadline_at=None)
                )
            if order.stock == "reserved" and order.payment == "completed":
                confirmed = replace(order, status="CONFIRMED", deadline_at=None)
                return Decision(confirmed, (m.OrderConfirmed(order_id=order.order_id, total=order.total),))
            if order.status == "PENDING_PAYMENT":
                return Decision(replace(order, status="AWAITING_STOCK", deadline_at=now + timeouts.stock))
    return _settle(order)


def cancel(order: Order, reason: m.CancelReason, detail: str = "") -> Decision:
    """Start compensating an order that is not already cancelling or cancelled."""
    if order.status in ("CANCELLING", "CANCELLED"):
        return Decision(None)
    cancelling = replace(order, status="CANCELLING", cancel_reason=reason, deadline_at=None)
    settled = _settle(cancelling)
    if settled.state is not None and settled.state.status == "CANCELLED":
        return settled  # nothing was charged or reserved: done at once
    notice = m.OrderCancelling(order_id=order.order_id, reason=reason, detail=detail[:500])
    return Decision(cancelling, (notice, *settled.events))


def expire(order: Order, now: datetime) -> Decision:
    """The deadline check: an order waiting too long at a step is cancelled."""
    if order.status in TERMINAL or order.status == "CANCELLING":
        return Decision(None)
    if order.deadline_at is None or order.deadline_at > now:
        return Decision(None)
    step = "payment" if order.status == "PENDING_PAYMENT" else "stock reservation"
    return cancel(order, "deadline_expired", f"no answer from {step} in time")


def compensations_done(order: Order) -> bool:
    if order.payment == "failed":
        return True
    return order.payment == "refunded" and order.stock in ("rejected", "released")


def _settle(order: Order) -> Decision:
    """A cancelling order whose compensations are all done becomes CANCELLED."""
    if order.status == "CANCELLING" and compensations_done(order):
        assert order.cancel_reason is not None
        cancelled = replace(order, status="CANCELLED", deadline_at=None)
        return Decision(cancelled, (m.OrderCancelled(order_id=order.order_id, reason=order.cancel_reason),))
    return Decision(order)
