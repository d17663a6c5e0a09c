"""Reference data: customer accounts (payment) and stock levels (inventory)."""

from __future__ import annotations

from collections.abc import Iterable

from producers import migrate
from producers.db import DbConnection, qualified
from sagas.config import SERVICES, SagaConfig


async def migrate_all(conn: DbConnection, config: SagaConfig) -> None:
    for service in SERVICES:
        await migrate.migrate(conn, config.schema(service), migrate.load(service))


async def add_accounts(
    conn: DbConnection, config: SagaConfig, accounts: Iterable[tuple[str, str, int]]
) -> None:
    """(customer id, currency, balance in minor units); an existing account is left alone."""
    await conn.executemany(
        f"INSERT INTO {qualified(config.schema('payment'), 'accounts')}"
        " (customer_id, currency, balance_minor)"
        " VALUES ($1, $2, $3) ON CONFLICT (customer_id) DO NOTHING",
        list(accounts),
    )


async def add_stock(conn: DbConnection, config: SagaConfig, stock: Iterable[tuple[str, int]]) -> None:
    """(sku, initial quantity); an existing SKU is left alone."""
    await conn.executemany(
        f"INSERT INTO {qualified(config.schema('inventory'), 'stock')} (sku, initial, available)"
        " VALUES ($1, $2, $2) ON CONFLICT (sku) DO NOTHING",
        list(stock),
    )
