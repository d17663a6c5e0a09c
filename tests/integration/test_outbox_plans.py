"""What the outbox's hot statements read, on a real PostgreSQL, when the outbox holds many
rows published since its last vacuum (a busy outbox between two autovacuums): the stage
statement's check for a key's earlier row and the relay's pass must read about what they
return, not every pending-index entry of a bucket or the whole table (docs/benchmarks.md,
nineteenth step).

Each statement runs for real under EXPLAIN (ANALYZE, BUFFERS) in a service's session; the
test counts the buffers it touched."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import asyncpg
import pytest

from producers import outbox
from producers.db import qualified
from producers.outbox import Staged
from producers.publisher import Publisher
from producers.relay import OutboxRelay
from sagaline.bootstrap import create_pool
from sagaline.settings import Settings
from schemas.envelope import Envelope
from schemas.messages import Message, OrderConfirmed
from schemas.topics import TopicMap
from schemas.values import Money

pytestmark = [pytest.mark.postgres]

KEYS = 5_000
PUBLISHED = 20_000  # four published rows a key, their index entries still there
# (values of 400 bytes, as an order's events: the table is ~1,300 pages)


class Measuring:
    """Stands in for a connection: runs each fetched statement under EXPLAIN (ANALYZE,
    BUFFERS) on the real one, keeps the buffers it touched, and returns no rows."""

    def __init__(self, conn: asyncpg.Connection[Any]) -> None:
        self.conn = conn
        self.buffers: list[int] = []

    def is_in_transaction(self) -> bool:
        return self.conn.is_in_transaction()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        plan = json.loads(await self.conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args))
        top = plan[0]["Plan"]
        self.buffers.append(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
        return []


class HoldsAll:
    """A relay that holds every bucket and has nothing acknowledged: every staged row is
    checked for an earlier pending row of its key."""

    def eligibility(self) -> tuple[list[int], list[int]]:
        return list(range(outbox.BUCKETS)), []

    def hand(self, rows: Sequence[Staged]) -> None:
        raise AssertionError("a measured statement returns no rows to hand over")


def confirmed(order_id: str) -> Envelope[Message]:
    message = OrderConfirmed(order_id=order_id, total=Money(amount_minor=1, currency="EUR"))
    return Envelope.new(message, "/sagaline/order")


async def _fill(conn: asyncpg.Connection[Any], table: str) -> None:
    """`PUBLISHED` pending rows over `KEYS` keys, in the buckets their keys give."""
    keys = [f"order-{i % KEYS}".encode() for i in range(PUBLISHED)]
    await conn.execute(
        f"INSERT INTO {table} (event_id, topic, key, value, headers, bucket)"
        " SELECT 'e-' || n, 'orders', k, decode(repeat('00', 400), 'hex'), '[]', b"
        " FROM unnest($1::bytea[], $2::smallint[]) WITH ORDINALITY AS r(k, b, n)",
        keys,
        [outbox.bucket_of(key) for key in keys],
    )


async def _no_older_snapshot(conn: asyncpg.Connection[Any], timeout_s: float = 60.0) -> None:
    """Until no other transaction in this database began before now: while one runs (another
    test's session, an autovacuum ANALYZE of another table), the rows just published are not
    dead to every snapshot, no scan may mark their index entries dead, and every pass reads
    all of them (22,304 buffers here) whatever the statement. That is the test's setting
    failing, not the statement: wait it out, or say so."""
    since = await conn.fetchval("SELECT clock_timestamp()")
    deadline = time.monotonic() + timeout_s
    while True:
        older = await conn.fetch(
            "SELECT pid, backend_type, application_name, state, left(query, 80) AS query"
            " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) AND xact_start < $1",
            since,
        )
        if not older:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"transactions older than the test's rows still run: {[dict(r) for r in older]}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def busy(postgres_dsn: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A service's pool on an outbox whose pending indexes hold `PUBLISHED` entries of rows
    published since the last vacuum (autovacuum is off for the table, so none comes)."""
    pool = await create_pool(Settings(), postgres_dsn, service=True)
    table = qualified(pg_schema, "outbox")
    try:
        async with pool.acquire() as conn:
            await outbox.install(conn, pg_schema)
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            await _fill(conn, table)
            await conn.execute(f"UPDATE {table} SET published_at = now()")
            await _no_older_snapshot(conn)
        yield pool
    finally:
        await pool.close()


async def test_the_stage_check_reads_the_keys_entries_not_their_buckets(
    busy: asyncpg.Pool[Any], pg_schema: str
) -> None:
    topics = TopicMap(prefix="")
    async with busy.acquire() as conn:
        measuring = Measuring(conn)
        async with conn.transaction():
            envelopes = [confirmed(f"order-{i}") for i in range(10)]  # keys with published rows
            await outbox.stage_many(cast(Any, measuring), pg_schema, envelopes, topics, dispatch=HoldsAll())
    # ten rows to insert and ten keys to look up; a bucket's entries would be ~3,100 reads
    (buffers,) = measuring.buffers
    assert buffers < 400, buffers


async def test_a_relay_pass_reads_what_it_would_send_not_every_entry(
    busy: asyncpg.Pool[Any], pg_schema: str
) -> None:
    topics = TopicMap(prefix="")
    async with busy.acquire() as conn, conn.transaction():
        await outbox.stage_many(conn, pg_schema, [confirmed(f"new-{i}") for i in range(10)], topics)
    # the pass returns before sending anything: the measured statement returns no rows
    relay = OutboxRelay(busy, cast(Publisher, None), pg_schema)
    async with busy.acquire() as conn:
        measuring = Measuring(conn)
        for _ in range(3):
            assert await relay._publish_pass(measuring) == 0
    # the first pass may meet each published row once (and mark its entry dead); later passes
    # read 64 probes and the ten rows, where the whole table would be thousands of reads
    assert measuring.buffers[-1] < 400, measuring.buffers


async def test_a_pass_over_a_backlog_reads_about_a_batch(postgres_dsn: str, pg_schema: str) -> None:
    """After an outage: every bucket has hundreds of rows to send. A pass reads each held
    bucket's share of the batch, not the whole backlog, so draining it costs the same a row
    at any depth."""
    pool = await create_pool(Settings(), postgres_dsn, service=True)
    table = qualified(pg_schema, "outbox")
    try:
        async with pool.acquire() as conn:
            await outbox.install(conn, pg_schema)
            await _fill(conn, table)
            # as autovacuum does for an outbox in use; on a table never analysed the planner
            # reads each bucket whole and sorts it, as every pass did before
            await conn.execute(f"ANALYZE {table}")
        relay = OutboxRelay(pool, cast(Publisher, None), pg_schema)  # returns before sending
        async with pool.acquire() as conn:
            measuring = Measuring(conn)
            assert await relay._publish_pass(measuring) == 0
    finally:
        await pool.close()
    # a batch of 500 rows (~8 a bucket) and 64 probes; the whole backlog is ~1,300 pages and
    # 20,000 rows
    (buffers,) = measuring.buffers
    assert buffers < 3_000, buffers
