"""The saga's messages: upstream requests (commands) and the events services emit.

Every message is immutable, rejects unknown fields, carries the order id (the record key)
and declares its type name and schema version. Business outcomes (a declined payment,
missing stock) are events with a reason, never errors.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.values import Currency, Identifier, LineItem, Money, StockLine

IdempotencyKey = Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]
CancelReason = Literal["payment_declined", "out_of_stock", "customer_request", "deadline_expired"]


class Message(BaseModel):
    """Base of every message. The class name is the CloudEvents `type` suffix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: ClassVar[int] = 1
    kind: ClassVar[Literal["command", "event"]]

    order_id: Identifier

    @property
    def key(self) -> str:
        """The Kafka record key: every message of one order lands in one partition."""
        return self.order_id


class Command(Message):
    """A request from upstream. Carries the caller's idempotency key."""

    kind: ClassVar[Literal["command", "event"]] = "command"
    idempotency_key: IdempotencyKey


class Event(Message):
    """Something that happened in a service."""

    kind: ClassVar[Literal["command", "event"]] = "event"


# --- upstream requests --------------------------------------------------------------


class PlaceOrder(Command):
    """Upstream asks for an order. Retries carry the same idempotency key."""

    customer_id: Identifier
    currency: Currency
    items: list[LineItem] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _skus_are_unique(self) -> PlaceOrder:
        skus = [item.sku for item in self.items]
        if len(set(skus)) != len(skus):
            raise ValueError("items: each sku may appear once (sum the quantities)")
        return self

    @property
    def total(self) -> Money:
        return Money(amount_minor=sum(i.total_minor for i in self.items), currency=self.currency)


class CancelOrder(Command):
    """Upstream asks to cancel an order at any step; compensations follow."""

    reason: Reason = "customer request"


# --- order service ------------------------------------------------------------------


class OrderPlaced(Event):
    """The order service accepted an order; payment is next."""

    customer_id: Identifier
    items: list[LineItem] = Field(min_length=1, max_length=100)
    total: Money


class OrderConfirmed(Event):
    """Paid and stock reserved: the saga ended successfully."""

    total: Money


class OrderRejected(Event):
    """A request was refused (idempotency key reused with another body, order id taken);
    no order was created for it."""

    idempotency_key: IdempotencyKey
    reason: Reason


class OrderCancelling(Event):
    """The order will be cancelled: participants compensate (refund, release stock)."""

    reason: CancelReason
    detail: str = Field(default="", max_length=500)


class OrderCancelled(Event):
    """The saga ended without the order; every compensation is done."""

    reason: CancelReason
    detail: str = Field(default="", max_length=500)


# --- payment service ----------------------------------------------------------------


class PaymentCompleted(Event):
    """The customer was charged; inventory reserves stock next."""

    payment_id: Identifier
    customer_id: Identifier
    amount: Money
    lines: list[StockLine] = Field(min_length=1, max_length=100)


class PaymentFailed(Event):
    """The charge was declined (a business outcome, not an error)."""

    customer_id: Identifier
    amount: Money
    reason: Reason


class PaymentRefunded(Event):
    """A charge was refunded (compensation)."""

    payment_id: Identifier
    amount: Money
    reason: Reason


# --- inventory service --------------------------------------------------------------


class StockReserved(Event):
    """Every line of the order is reserved."""

    lines: list[StockLine] = Field(min_length=1, max_length=100)


class StockRejected(Event):
    """Not enough stock for at least one line; nothing was reserved."""

    reason: Reason
    missing: list[StockLine] = Field(default_factory=list, max_length=100)


class StockReleased(Event):
    """A reservation was given back (compensation)."""

    lines: list[StockLine] = Field(min_length=1, max_length=100)


ALL_MESSAGES: tuple[type[Message], ...] = (
    PlaceOrder,
    CancelOrder,
    OrderPlaced,
    OrderConfirmed,
    OrderRejected,
    OrderCancelling,
    OrderCancelled,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    StockReserved,
    StockRejected,
    StockReleased,
)
