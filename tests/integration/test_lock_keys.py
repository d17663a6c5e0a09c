"""Keys a batch handler declares (`Handlers.register_batch`'s `locks`) against a real
PostgreSQL: the unit of work takes them with its subjects' locks in the claim statement, so
they are held before the handler runs and its own `lock` of them sends nothing; the careful
path (one message at a time, after a failure) holds them too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from consumers import inbox
from consumers.errors import PermanentError
from consumers.handlers import HandlerContext, Handlers
from consumers.unit_of_work import InboundRecord, UnitOfWork
from producers import outbox
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.messages import Message, OrderConfirmed, OrderPlaced
from schemas.topics import TopicMap
from schemas.values import LineItem, Money

pytestmark = [pytest.mark.postgres]


class Statements:
    """Every statement the unit's connections send (an asyncpg query logger)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, logged: Any) -> None:
        self.sent.append(" ".join(logged.query.split()))


@pytest.fixture
async def statements() -> Statements:
    return Statements()


@pytest.fixture
async def pool(postgres_dsn: str, unique: str, statements: Statements) -> AsyncIterator[asyncpg.Pool[Any]]:
    async def log_statements(conn: asyncpg.Connection[Any]) -> None:
        conn.add_query_logger(statements)

    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1, init=log_statements)
    async with pool.acquire() as conn:
        await outbox.install(conn, f"lk_{unique}")
        await inbox.install(conn, f"lk_{unique}")
    statements.sent.clear()
    yield pool
    await pool.close()


async def held_elsewhere(dsn: str, schema: str, key: str) -> bool:
    """Whether another session holds the unit of work's lock on `key` (its spelling:
    `consumers.handlers.lock_keys_sql`)."""
    other = await asyncpg.connect(dsn)
    try:
        free = await other.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtext($1 || ':' || $2))", schema, key
        )
        return not free
    finally:
        await other.close()


def record(message: Message, offset: int) -> InboundRecord:
    encoded = encode(Envelope.new(message, "tests"))
    return InboundRecord("orders", 0, offset, 0, encoded.key, encoded.value, encoded.headers)


def placed(order_id: str, customer_id: str) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id=customer_id,
        items=[LineItem(sku="sku-1", quantity=1, unit_price_minor=100)],
        total=Money(amount_minor=100, currency="EUR"),
    )


def customer_lock(message: OrderPlaced) -> tuple[str, ...]:
    return (f"customer:{message.customer_id}",)


def unit(pool: asyncpg.Pool[Any], dsn: str, schema: str, seen: list[tuple[str, bool, bool]]) -> UnitOfWork:
    """Confirms each order; for each message it notes whether its customer's lock was held
    by the unit (from another session) and whether the handler's own lock of it was free.
    An order of the customer "c-bad" fails for good (the careful path then applies the
    batch's other messages one by one)."""
    handlers = Handlers()

    async def apply(contexts: list[HandlerContext]) -> None:
        for ctx in contexts:
            message = ctx.envelope.data
            assert isinstance(message, OrderPlaced)
            key = customer_lock(message)[0]
            seen.append((message.order_id, await held_elsewhere(dsn, schema, key), key in ctx.held))
            await ctx.lock(key)
            if message.customer_id == "c-bad":
                raise PermanentError("a customer this test refuses")
            await ctx.emit(OrderConfirmed(order_id=message.order_id, total=message.total))

    handlers.register_batch((OrderPlaced,), apply, locks=customer_lock)  # type: ignore[arg-type]
    return UnitOfWork(
        pool, schema=schema, group="lk", source="tests", handlers=handlers, topics=TopicMap(prefix=schema)
    )


async def test_declared_keys_are_locked_by_the_claim_and_the_handlers_lock_sends_nothing(
    pool: asyncpg.Pool[Any], postgres_dsn: str, unique: str, statements: Statements
) -> None:
    schema = f"lk_{unique}"
    seen: list[tuple[str, bool, bool]] = []
    outcomes = await unit(pool, postgres_dsn, schema, seen).process(
        [record(placed("o-1", "c-1"), 0), record(placed("o-2", "c-2"), 1)]
    )

    assert [o.kind for o in outcomes] == ["applied", "applied"]
    assert seen == [("o-1", True, True), ("o-2", True, True)]
    locking = [s for s in statements.sent if "pg_advisory_xact_lock" in s]
    assert len(locking) == 1, statements.sent
    assert locking[0].startswith("INSERT INTO"), statements.sent  # the claim
    assert await held_elsewhere(postgres_dsn, schema, "customer:c-1") is False  # released at the commit


async def test_the_careful_path_holds_the_declared_keys_too(
    pool: asyncpg.Pool[Any], postgres_dsn: str, unique: str
) -> None:
    schema = f"lk_{unique}"
    seen: list[tuple[str, bool, bool]] = []
    outcomes = await unit(pool, postgres_dsn, schema, seen).process(
        [record(placed("o-1", "c-1"), 0), record(placed("o-2", "c-bad"), 1)]
    )

    assert [o.kind for o in outcomes] == ["applied", "dead_letter"]
    # the fast path ran both, then the careful path each again: every time, the key was held
    assert [order for order, _, _ in seen] == ["o-1", "o-2", "o-1", "o-2"]
    assert all(held and in_held for _, held, in_held in seen), seen
    confirmed = await pool.fetch(f'SELECT key FROM "{schema}".outbox')
    assert [bytes(r["key"]) for r in confirmed] == [b"o-1"]
