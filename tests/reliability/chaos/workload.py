"""The chaos workload: a fixed-seed set of orders whose outcomes are known in advance.

Every order has its own customer, so a decline is decided by data, not by timing: a funded
customer can always pay, an unfunded one never. Plentiful SKUs never run out; the scarce
SKU has stock for a third of the orders that ask for it. Some customers cancel at a random
moment after ordering. About 30% of the sagas end in a compensation or a decline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from schemas.messages import CancelOrder, PlaceOrder
from schemas.values import LineItem

LEGAL_CANCEL_REASONS = ("customer_request", "payment_declined", "out_of_stock")


@dataclass(frozen=True)
class PlannedOrder:
    command: PlaceOrder
    funded: bool
    scarce: bool
    cancel_after_s: float | None

    @property
    def order_id(self) -> str:
        return self.command.order_id

    @property
    def total(self) -> int:
        return self.command.total.amount_minor

    def cancel(self) -> CancelOrder:
        return CancelOrder(order_id=self.order_id, idempotency_key=f"cancel-{self.order_id}")

    def problem(self, status: str | None, reason: str | None) -> str | None:
        """Why this final state is not one the workload allows (None when it is)."""
        if status not in ("CONFIRMED", "CANCELLED"):
            return f"{self.order_id} is {status or 'unknown to the order service'}"
        if reason == "deadline_expired":
            return f"{self.order_id} cancelled by its deadline: an answer was lost or held too long"
        if self.cancel_after_s is not None:
            ok = status == "CANCELLED" and reason in LEGAL_CANCEL_REASONS
        elif not self.funded:
            ok = (status, reason) == ("CANCELLED", "payment_declined")
        elif not self.scarce:
            ok = status == "CONFIRMED"
        else:
            ok = status == "CONFIRMED" or (status, reason) == ("CANCELLED", "out_of_stock")
        return None if ok else f"{self.order_id} ended {status} ({reason}), which its workload does not imply"


@dataclass(frozen=True)
class Workload:
    orders: list[PlannedOrder]
    accounts: dict[str, int]  # customer -> initial balance (minor units, EUR)
    stock: dict[str, int]  # sku -> initial quantity

    @property
    def by_id(self) -> dict[str, PlannedOrder]:
        return {o.order_id: o for o in self.orders}


def plan(prefix: str, count: int = 1000, seed: int = 20261122) -> Workload:
    rng = random.Random(seed)
    skus = [f"{prefix}sku{i}" for i in range(10)]
    scarce_sku = f"{prefix}scarce"
    orders: list[PlannedOrder] = []
    accounts: dict[str, int] = {}
    scarce_orders = 0
    for i in range(count):
        customer = f"{prefix}c{i}"
        funded = rng.random() >= 0.1
        scarce = rng.random() < 0.15
        items = [
            LineItem(sku=sku, quantity=rng.randint(1, 3), unit_price_minor=rng.randint(100, 5000))
            for sku in rng.sample(skus, rng.randint(1, 2))
        ]
        if scarce:
            items.append(LineItem(sku=scarce_sku, quantity=1, unit_price_minor=999))
            scarce_orders += 1
        command = PlaceOrder(
            order_id=f"{prefix}o{i}",
            idempotency_key=f"chaos-{prefix}{i}",
            customer_id=customer,
            currency="EUR",
            items=items,
        )
        # ample for a funded customer, so even a defect charging twice cannot be refused
        accounts[customer] = command.total.amount_minor * 10 if funded else 0
        cancel_after = rng.uniform(0.0, 0.5) if rng.random() < 0.1 else None
        orders.append(PlannedOrder(command, funded, scarce, cancel_after))
    stock = {sku: count * 10 for sku in skus} | {scarce_sku: max(1, scarce_orders // 3)}
    return Workload(orders, accounts, stock)
