"""Writes a handler defers (HandlerContext.defer) against a real PostgreSQL: they reach the
database in the outbox's round trip, a later handler of the same unit sees them, and one
that fails takes only its own message down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from consumers import inbox
from consumers.handlers import HandlerContext, Handlers
from consumers.unit_of_work import InboundRecord, UnitOfWork
from producers import outbox
from producers.db import qualified
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.messages import Message, OrderConfirmed, OrderPlaced
from schemas.topics import TopicMap
from schemas.values import LineItem, Money

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def pool(postgres_dsn: str, unique: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    schema = f"dw_{unique}"
    async with pool.acquire() as conn:
        await outbox.install(conn, schema)
        await inbox.install(conn, schema)
        await conn.execute(
            f"CREATE TABLE {qualified(schema, 'tally')}"
            " (id bigserial PRIMARY KEY, order_id text NOT NULL, n integer NOT NULL,"
            "  amount bigint NOT NULL CHECK (amount > 0))"
        )
    yield pool
    await pool.close()


def unit(pool: asyncpg.Pool[Any], unique: str) -> UnitOfWork:
    """A service that numbers each order's OrderPlaced events: it counts the order's tally
    rows, then defers the insert of the next one (so each message depends on the one
    before; none conflicts with another, so a missing flush would fail no statement)."""
    schema = f"dw_{unique}"
    handlers = Handlers()

    @handlers.on(OrderPlaced)
    async def on_placed(ctx: HandlerContext, placed: OrderPlaced) -> None:
        seen = await ctx.conn.fetchval(
            f"SELECT count(*) FROM {qualified(schema, 'tally')} WHERE order_id = $1", placed.order_id
        )
        ctx.defer(
            f"INSERT INTO {qualified(schema, 'tally')} (order_id, n, amount) VALUES ($1, $2, $3)",
            placed.order_id,
            seen + 1,
            placed.total.amount_minor,
        )
        await ctx.emit(OrderConfirmed(order_id=placed.order_id, total=placed.total))

    return UnitOfWork(
        pool, schema=schema, group="tally", source="tests", handlers=handlers, topics=TopicMap(prefix=unique)
    )


def record(message: Message, offset: int) -> InboundRecord:
    encoded = encode(Envelope.new(message, "tests"))
    return InboundRecord("orders", 0, offset, 0, encoded.key, encoded.value, encoded.headers)


def placed(order_id: str, amount: int = 100) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id="c-1",
        items=[LineItem(sku="sku-1", quantity=1, unit_price_minor=amount)],
        total=Money(amount_minor=amount, currency="EUR"),
    )


async def test_a_deferred_write_is_seen_by_the_next_handler_and_commits_with_the_outbox(
    pool: asyncpg.Pool[Any], unique: str
) -> None:
    schema = f"dw_{unique}"
    outcomes = await unit(pool, unique).process([record(placed("o-1"), n) for n in range(3)])

    assert [o.kind for o in outcomes] == ["applied"] * 3
    # each handler read what the one before it deferred: 1, 2, 3 (without the flush, 1, 1, 1)
    numbers = await pool.fetch(f"SELECT n FROM {qualified(schema, 'tally')} ORDER BY id")
    assert [r["n"] for r in numbers] == [1, 2, 3]
    assert await pool.fetchval(f"SELECT count(*) FROM {qualified(schema, 'outbox')}") == 3
    assert await pool.fetchval(f"SELECT count(*) FROM {qualified(schema, 'inbox')}") == 3


async def test_a_failing_deferred_write_dead_letters_its_message_and_nothing_of_it_commits(
    pool: asyncpg.Pool[Any], unique: str
) -> None:
    schema = f"dw_{unique}"
    bad = placed("o-bad", amount=0)  # the tally's CHECK refuses it, in the combined statement
    outcomes = await unit(pool, unique).process([record(placed("o-1"), 0), record(bad, 1)])

    assert [o.kind for o in outcomes] == ["applied", "dead_letter"]
    assert outcomes[1].failure is not None
    assert isinstance(outcomes[1].failure.exc, asyncpg.CheckViolationError)
    tallies = await pool.fetch(f"SELECT order_id, n FROM {qualified(schema, 'tally')}")
    assert [(r["order_id"], r["n"]) for r in tallies] == [("o-1", 1)]
    keys = await pool.fetch(f"SELECT key FROM {qualified(schema, 'outbox')}")
    assert [bytes(r["key"]) for r in keys] == [b"o-1"]
    claimed = await pool.fetchval(f"SELECT count(*) FROM {qualified(schema, 'inbox')}")
    assert claimed == 1  # the dead letter's inbox row rolled back with its write
