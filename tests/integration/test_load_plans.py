"""A participant's load (order, payment, inventory) reads the rows its batch names through
their indexes, however large the tables grow: a batch costs the same against a thousand
accounts or a million. (An OR of the batch's keys and a subquery once made every payment
batch scan every account.)

The loads run for real against a real PostgreSQL with large, analysed tables; each statement
they send is explained instead of executed, and its plan may not scan the table whole."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest

from producers.db import qualified
from sagas import inventory, order, payment, seed
from sagas.config import SagaConfig
from schemas.messages import CancelOrder
from tests.saga_support import order as place_order

pytestmark = [pytest.mark.postgres]

ROWS = 100_000


class Explaining:
    """Stands in for the load's connection: explains each query on the real one, keeps the
    plan, and returns no rows."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.plans: list[dict[str, Any]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        plan = await self.conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        self.plans.append(json.loads(plan)[0]["Plan"])
        return []


def scanned_whole(plan: dict[str, Any]) -> set[str]:
    """Tables a plan reads whole: a sequential scan, or an index scan with no condition (in
    index order, filtering every row — the shape an ORDER BY on the key gives a scan whose
    filter cannot use the index)."""
    whole = plan["Node Type"] == "Seq Scan" or (
        plan["Node Type"] in ("Index Scan", "Index Only Scan") and "Index Cond" not in plan
    )
    found = {plan["Relation Name"]} if whole else set()
    for child in plan.get("Plans", []):
        found |= scanned_whole(child)
    return found


@pytest.fixture
async def large(postgres_dsn: str, unique: str) -> AsyncIterator[tuple[asyncpg.Connection[Any], SagaConfig]]:
    config = SagaConfig(prefix=f"plan{unique}_")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await seed.migrate_all(conn, config)
        orders = qualified(config.schema("order"), "orders")
        early = qualified(config.schema("order"), "early_cancellations")
        accounts = qualified(config.schema("payment"), "accounts")
        payments = qualified(config.schema("payment"), "payments")
        stock = qualified(config.schema("inventory"), "stock")
        reservations = qualified(config.schema("inventory"), "reservations")
        for sql in (
            f"INSERT INTO {orders} (order_id, idempotency_key, request_hash, customer_id, currency,"
            " total_minor, items, status)"
            " SELECT 'o' || i, 'k' || i, 'h', 'c' || i, 'EUR', 10, '[]', 'CONFIRMED'",
            f"INSERT INTO {early} (order_id, reason) SELECT 'e' || i, 'customer request'",
            f"INSERT INTO {accounts} (customer_id, currency, balance_minor) SELECT 'c' || i, 'EUR', 1000",
            f"INSERT INTO {payments} (payment_id, order_id, status, customer_id, currency, amount_minor,"
            " charged_minor, refunded_minor)"
            " SELECT 'p' || i, 'o' || i, 'charged', 'c' || i, 'EUR', 10, 10, 0",
            f"INSERT INTO {stock} (sku, initial, available) SELECT 'sku' || i, 10, 10",
            f"INSERT INTO {reservations} (order_id, status, lines) SELECT 'o' || i, 'reserved',"
            " jsonb_build_array(jsonb_build_object('sku', 'sku' || i, 'quantity', 1))",
        ):
            await conn.execute(f"{sql} FROM generate_series(1, $1) AS i", ROWS)
        for table in (orders, early, accounts, payments, stock, reservations):
            await conn.execute(f"ANALYZE {table}")
        yield conn, config
    finally:
        await conn.close()


async def test_a_payment_batch_reads_accounts_and_payments_by_index(
    large: tuple[asyncpg.Connection[Any], SagaConfig],
) -> None:
    conn, config = large
    explaining = Explaining(conn)
    orders = [f"o{i}" for i in range(1, 101)]
    # new orders (their customers' accounts are locked with the payments read), and a batch of
    # cancellations only (the accounts of charged payments, read after them)
    await payment._load(
        cast(Any, explaining), config.schema("payment"), orders, [f"c{i}" for i in range(300, 400)]
    )
    await payment._load(cast(Any, explaining), config.schema("payment"), orders, [])
    assert len(explaining.plans) == 2  # the second batch's payments were none, so no accounts
    for plan in explaining.plans:
        assert not scanned_whole(plan) & {"accounts", "payments"}, json.dumps(plan, indent=1)


async def test_an_inventory_batch_reads_stock_and_reservations_by_index(
    large: tuple[asyncpg.Connection[Any], SagaConfig],
) -> None:
    conn, config = large
    explaining = Explaining(conn)
    orders = [f"o{i}" for i in range(1, 101)]
    await inventory._load(
        cast(Any, explaining), config.schema("inventory"), orders, [f"sku{i}" for i in range(300, 400)]
    )
    assert len(explaining.plans) == 1
    assert not scanned_whole(explaining.plans[0]) & {"stock", "reservations"}, json.dumps(
        explaining.plans[0], indent=1
    )


async def test_an_order_batch_reads_orders_and_early_cancellations_by_index(
    large: tuple[asyncpg.Connection[Any], SagaConfig],
) -> None:
    conn, config = large
    explaining = Explaining(conn)
    requests = [place_order(f"n{i}") for i in range(100)]
    cancels = [CancelOrder(order_id=f"o{i}", idempotency_key=f"cancel-o{i}") for i in range(1, 101)]
    await order._load(cast(Any, explaining), config.schema("order"), [*requests, *cancels])
    await order._load(cast(Any, explaining), config.schema("order"), list(cancels))
    assert len(explaining.plans) == 2  # with requests: the early cancellations in the same statement
    for plan in explaining.plans:
        assert not scanned_whole(plan) & {"orders", "early_cancellations"}, json.dumps(plan, indent=1)
