"""Value objects shared by messages. Money is integer minor units plus an ISO currency."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
"""ISO 4217 alphabetic code, e.g. EUR."""

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
"""Order, customer, payment ids: short, printable, safe in a Kafka key and a URL."""

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]

MINOR_UNITS_MAX = 10**12  # 10 billion in a two-decimal currency: beyond any single order


class Value(BaseModel):
    """Base of immutable value objects: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Money(Value):
    amount_minor: int = Field(ge=0, le=MINOR_UNITS_MAX, description="Amount in minor units (cents).")
    currency: Currency


class LineItem(Value):
    sku: Sku
    quantity: int = Field(gt=0, le=10_000)
    unit_price_minor: int = Field(ge=0, le=MINOR_UNITS_MAX, description="Price of one unit, minor units.")

    @property
    def total_minor(self) -> int:
        return self.quantity * self.unit_price_minor


class StockLine(Value):
    sku: Sku
    quantity: int = Field(gt=0, le=10_000)


# Lines as one JSON array (how the order and inventory services store them): read and written
# in one call each, a third of the time of a model per line and the json module
LINE_ITEMS: TypeAdapter[tuple[LineItem, ...]] = TypeAdapter(tuple[LineItem, ...])
STOCK_LINES: TypeAdapter[tuple[StockLine, ...]] = TypeAdapter(tuple[StockLine, ...])
