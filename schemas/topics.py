"""The topic map: which message goes to which topic, and what each topic looks like.

Topics are per producing service plus one ingress topic for upstream requests; every
record is keyed by order id so one order's messages stay in order within a topic. A
`prefix` gives tests (and multi-tenant clusters) their own set of topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import messages as m

INGRESS = "sagaline.ingress"
ORDERS = "orders.events"
PAYMENTS = "payments.events"
INVENTORY = "inventory.events"

ROUTES: dict[type[m.Message], str] = {
    m.PlaceOrder: INGRESS,
    m.CancelOrder: INGRESS,
    m.OrderPlaced: ORDERS,
    m.OrderConfirmed: ORDERS,
    m.OrderRejected: ORDERS,
    m.OrderCancelling: ORDERS,
    m.OrderCancelled: ORDERS,
    m.PaymentCompleted: PAYMENTS,
    m.PaymentFailed: PAYMENTS,
    m.PaymentRefunded: PAYMENTS,
    m.StockReserved: INVENTORY,
    m.StockRejected: INVENTORY,
    m.StockReleased: INVENTORY,
}

PRODUCERS: dict[str, str] = {
    INGRESS: "upstream services",
    ORDERS: "order service",
    PAYMENTS: "payment service",
    INVENTORY: "inventory service",
}

WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like. `replication=None` takes 3, capped to the broker count."""

    name: str
    partitions: int = 3
    replication: int | None = None
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicMap:
    prefix: str = ""
    partitions: int = 6
    replication: int = 3
    retention_ms: int = WEEK_MS

    def name(self, base: str) -> str:
        return self.prefix + base

    def topic_for(self, message: type[m.Message]) -> str:
        return self.name(ROUTES[message])

    def messages_on(self, base: str) -> list[type[m.Message]]:
        return [cls for cls, topic in ROUTES.items() if topic == base]

    @property
    def ingress(self) -> str:
        return self.name(INGRESS)

    @property
    def orders(self) -> str:
        return self.name(ORDERS)

    @property
    def payments(self) -> str:
        return self.name(PAYMENTS)

    @property
    def inventory(self) -> str:
        return self.name(INVENTORY)

    def specs(self) -> list[TopicSpec]:
        configs = {"retention.ms": str(self.retention_ms), "cleanup.policy": "delete"}
        return [
            TopicSpec(self.name(base), self.partitions, self.replication, dict(configs))
            for base in (INGRESS, ORDERS, PAYMENTS, INVENTORY)
        ]
