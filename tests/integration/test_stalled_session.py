"""A service process that stalls inside a transaction (paused, swapped out, stuck in a call
that never returns) must not hold its rows for ever: the process of its group that takes
its partitions over needs them. On a real PostgreSQL, a service's session left idle in its
transaction is ended after SAGALINE_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S, its locks go to
the next writer, its own writes roll back, and when it wakes its failure is a transient one
(the batch is retried on a new connection). With the timeout off, the row stays locked."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
import pytest

from consumers.errors import classify
from sagaline.bootstrap import create_pool
from sagaline.settings import Settings

pytestmark = pytest.mark.postgres


@dataclass
class Stall:
    other_waited_s: float | None  # how long the next writer waited for the row (None: gave up)
    woke: str  # what the stalled session met when it went on: committed, or its failure class
    on_hand: int
    pool_serves_again: bool


async def _stall(dsn: str, schema: str, timeout_s: float) -> Stall:
    settings = Settings.from_environ({"SAGALINE_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S": str(timeout_s)})
    pool = await create_pool(settings, dsn, application_name="sagaline-inventory", service=True)
    other = await asyncpg.connect(dsn)
    table = f'"{schema}".stock'
    try:
        await other.execute(f"CREATE TABLE {table} (sku text PRIMARY KEY, on_hand int NOT NULL)")
        await other.execute(f"INSERT INTO {table} VALUES ('hot', 10)")
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(f"UPDATE {table} SET on_hand = on_hand - 1 WHERE sku = 'hot'")
            # the process stalls here: nothing more is sent on this session for a while
            started = time.monotonic()
            await other.execute("SET lock_timeout = '3s'")
            try:
                await other.execute(f"UPDATE {table} SET on_hand = on_hand - 2 WHERE sku = 'hot'")
                waited: float | None = time.monotonic() - started
            except asyncpg.LockNotAvailableError:
                waited = None
            try:  # the process wakes and finishes its unit of work
                await conn.execute(f"UPDATE {table} SET on_hand = on_hand WHERE sku = 'hot'")
                await transaction.commit()
                woke = "committed"
            except Exception as exc:
                woke = classify(exc)
        serves = await pool.fetchval("SELECT 1") == 1
        on_hand = await other.fetchval(f"SELECT on_hand FROM {table} WHERE sku = 'hot'")
    finally:
        await other.close()
        await pool.close()
    return Stall(waited, woke, on_hand, serves)


async def test_a_stalled_sessions_locks_go_to_the_next_writer_after_the_timeout(
    postgres_dsn: str, pg_schema: str
) -> None:
    stall = await _stall(postgres_dsn, pg_schema, timeout_s=1.0)

    assert stall.other_waited_s is not None  # within its 3 s lock_timeout
    assert stall.other_waited_s >= 0.9  # held until the timeout, not released for another reason
    assert stall.woke == "transient"  # retried on a new connection, not dead-lettered
    assert stall.on_hand == 8  # the stalled write rolled back, the next writer's stands
    assert stall.pool_serves_again


async def test_with_the_timeout_off_a_stalled_session_keeps_the_row(
    postgres_dsn: str, pg_schema: str
) -> None:
    stall = await _stall(postgres_dsn, pg_schema, timeout_s=0)

    assert stall.other_waited_s is None  # the next writer gave up after its 3 s lock_timeout
    assert stall.woke == "committed"
    assert stall.on_hand == 9
    assert stall.pool_serves_again
