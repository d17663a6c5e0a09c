"""The guarantees, checked against the services' own tables.

- Money: charged - refunded = total of confirmed orders; no order charged twice.
- Stock: initial - reserved + released = available, never negative.
- Every saga ends: CONFIRMED (charged, reserved) or CANCELLED (declined or refunded, nothing
  held), REJECTED requests aside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from producers.db import DbConnection, qualified
from sagas.config import SagaConfig


@dataclass
class InvariantReport:
    checked: dict[str, bool] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def _check(self, name: str, problems: list[str]) -> None:
        self.checked[name] = not problems
        self.violations.extend(f"{name}: {p}" for p in problems)


async def check(
    conn: DbConnection, config: SagaConfig, order_ids: list[str] | None = None
) -> InvariantReport:
    """Money and stock are checked over everything; sagas over `order_ids` (all if None)."""
    orders = qualified(config.schema("order"), "orders")
    payments = qualified(config.schema("payment"), "payments")
    stock = qualified(config.schema("inventory"), "stock")
    reservations = qualified(config.schema("inventory"), "reservations")
    report = InvariantReport()

    charged = await conn.fetchval(f"SELECT COALESCE(sum(charged_minor), 0) FROM {payments}")
    refunded = await conn.fetchval(f"SELECT COALESCE(sum(refunded_minor), 0) FROM {payments}")
    confirmed = await conn.fetchval(
        f"SELECT COALESCE(sum(total_minor), 0) FROM {orders} WHERE status = 'CONFIRMED'"
    )
    report.figures.update(charged_minor=charged, refunded_minor=refunded, confirmed_total_minor=confirmed)
    money = (
        []
        if charged - refunded == confirmed
        else [f"charged {charged} - refunded {refunded} != confirmed {confirmed}"]
    )
    report._check("money", money)

    twice = await conn.fetch(
        f"SELECT p.order_id, p.charged_minor, o.total_minor"
        f" FROM {payments} p JOIN {orders} o USING (order_id)"
        " WHERE p.charged_minor NOT IN (0, o.total_minor) OR p.refunded_minor NOT IN (0, p.charged_minor)"
    )
    report._check(
        "no double charge",
        [f"{r['order_id']}: charged {r['charged_minor']} of {r['total_minor']}" for r in twice],
    )

    bad_stock = await conn.fetch(
        f"SELECT sku, initial, reserved, released, available FROM {stock}"
        " WHERE initial - reserved + released <> available OR available < 0"
    )
    report._check(
        "stock",
        [
            f"{r['sku']}: {r['initial']} - {r['reserved']} + {r['released']} != {r['available']}"
            for r in bad_stock
        ],
    )

    scope = "" if order_ids is None else " AND o.order_id = ANY($1::text[])"
    args = [] if order_ids is None else [order_ids]
    open_sagas = await conn.fetch(
        f"SELECT o.order_id, o.status FROM {orders} o"
        f" WHERE o.status NOT IN ('CONFIRMED', 'CANCELLED'){scope}",
        *args,
    )
    report._check("every saga terminal", [f"{r['order_id']} is {r['status']}" for r in open_sagas])

    inconsistent = await conn.fetch(
        f"SELECT o.order_id, o.status, p.status AS payment, r.status AS stock FROM {orders} o"
        f" LEFT JOIN {payments} p USING (order_id) LEFT JOIN {reservations} r USING (order_id)"
        " WHERE ((o.status = 'CONFIRMED'"
        "         AND (p.status IS DISTINCT FROM 'charged' OR r.status IS DISTINCT FROM 'reserved'))"
        "     OR (o.status = 'CANCELLED' AND (p.status = 'charged' OR r.status = 'reserved')))"
        f"{scope}",
        *args,
    )
    report._check(
        "terminal states consistent",
        [
            f"{r['order_id']} {r['status']} with payment {r['payment']} and stock {r['stock']}"
            for r in inconsistent
        ],
    )
    return report
