"""Both inboxes the unit of work claims through, on a real PostgreSQL: the inbox table every
participant has, and the tracker's timeline. Each claims an event id once, whatever the
batch or the redelivery, and takes the batch's key locks in the claiming statement."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from consumers import inbox
from consumers.inbox import Inbox, TableInbox
from producers import migrate
from sagas.tracker import TimelineInbox
from schemas import messages as m
from schemas.envelope import Envelope
from schemas.topics import TopicMap
from schemas.values import Money, StockLine

pytestmark = pytest.mark.postgres

TOPICS = TopicMap()


def _event(order_id: str) -> tuple[Envelope[m.Message], str]:
    message = m.PaymentCompleted(
        order_id=order_id,
        payment_id=f"{order_id}:charge",
        customer_id="c-1",
        amount=Money(amount_minor=500, currency="EUR"),
        lines=[StockLine(sku="mug", quantity=1)],
    )
    return Envelope[m.Message].new(message, "/test"), TOPICS.payments


@pytest.fixture(params=["table", "timeline"])
async def claims(request: pytest.FixtureRequest, postgres_dsn: str, pg_schema: str) -> AsyncIterator[Inbox]:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        if request.param == "table":
            await inbox.install(conn, pg_schema)
            yield TableInbox(pg_schema, "g")
        else:
            await migrate.migrate(conn, pg_schema, migrate.load("tracker"))
            yield TimelineInbox(pg_schema, TOPICS)
    finally:
        await conn.close()


async def test_an_event_id_is_claimed_once_across_batches_and_within_one(
    claims: Inbox, postgres_dsn: str
) -> None:
    first, second, third = _event("o-1"), _event("o-2"), _event("o-1")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async with conn.transaction():
            assert await claims.claim(conn, [first, second]) == {first[0].id, second[0].id}
        async with conn.transaction():  # a redelivery of `second` beside a new event
            assert await claims.claim(conn, [second, third, third]) == {third[0].id}
        async with conn.transaction():
            assert await claims.claim(conn, [first, second, third]) == set()
        fourth = _event("o-3")
        rolled_back = conn.transaction()  # a claim rolled back is no claim
        await rolled_back.start()
        assert await claims.claim(conn, [fourth]) == {fourth[0].id}
        await rolled_back.rollback()
        async with conn.transaction():
            assert await claims.claim(conn, [fourth]) == {fourth[0].id}
    finally:
        await conn.close()


async def test_the_claiming_statement_takes_the_batch_key_locks(
    claims: Inbox, postgres_dsn: str, pg_schema: str
) -> None:
    conn, other = await asyncpg.connect(postgres_dsn), await asyncpg.connect(postgres_dsn)
    try:
        async with conn.transaction():
            await claims.claim(conn, [_event("o-1"), _event("o-2")], lock=frozenset({"o-1", "o-2"}))
            held = await other.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
                conn.get_server_pid(),
            )
            assert held == 2
            # the same locks `HandlerContext.lock` takes: the other connection cannot have them
            assert not await other.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext($1 || ':' || 'o-1'))", pg_schema
            )
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtext($1 || ':' || 'o-1'))", pg_schema)
    finally:
        await conn.close()
        await other.close()
