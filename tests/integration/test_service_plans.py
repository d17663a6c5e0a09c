"""How a service's sessions plan a statement they run again and again, on a real PostgreSQL:
a statement first run while its table was new must still read through the index once the
table has grown, and a statement that must scan is not JIT-compiled for the penalty its
estimate then carries (sagaline.bootstrap.SERVICE_SERVER_SETTINGS)."""

from __future__ import annotations

import json

import pytest

from sagaline.bootstrap import create_pool
from sagaline.settings import Settings

pytestmark = pytest.mark.postgres


def _array(keys: list[str]) -> str:
    """A text[] literal of keys made of letters, digits and dashes."""
    return "'{" + ",".join(keys) + "}'"


async def _plan_after_growth(dsn: str, schema: str, *, service: bool) -> tuple[int, str]:
    """Run a batch load by keys twenty times while its table grows by each batch to 6,000
    rows, as a participant does from its first records on; grow the table to 26,000 rows;
    return how many generic plans the statement used and the plan it runs with now."""
    pool = await create_pool(Settings(), dsn, service=service)
    table = f'"{schema}".sagas_{"service" if service else "default"}'
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (order_id text PRIMARY KEY, status text NOT NULL)")
            await conn.execute(
                f"PREPARE load(text[]) AS SELECT order_id, status FROM {table} WHERE order_id = ANY($1)"
            )
            for batch in range(20):
                keys = [f"order-{batch:02d}-{i:04d}" for i in range(300)]
                await conn.execute(
                    f"INSERT INTO {table} SELECT k, 'REQUESTED' FROM unnest($1::text[]) AS k", keys
                )
                await conn.execute(f"EXECUTE load({_array(keys)})")
            await conn.execute(
                f"INSERT INTO {table} SELECT 'order-x-' || i, 'REQUESTED' FROM generate_series(1, 20000) AS i"
            )
            keys = [f"order-x-{i}" for i in range(1, 301)]
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE load({_array(keys)})"))
            generic = await conn.fetchval(
                "SELECT generic_plans FROM pg_prepared_statements WHERE name = 'load'"
            )
            await conn.execute("DEALLOCATE load")
            return generic, plan
    finally:
        await pool.close()


async def test_a_service_statement_planned_on_a_new_table_reads_through_the_index_once_it_has_grown(
    postgres_dsn: str, pg_schema: str
) -> None:
    generic, plan = await _plan_after_growth(postgres_dsn, pg_schema, service=True)
    assert generic > 0  # the cached, generic plan: made while the table was small
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan


async def test_without_the_service_settings_that_plan_scans_the_whole_table(
    postgres_dsn: str, pg_schema: str
) -> None:
    """The trap the service settings avoid, shown on the same PostgreSQL (if a PostgreSQL
    release stops falling into it, this fails and the setting can be reconsidered)."""
    generic, plan = await _plan_after_growth(postgres_dsn, pg_schema, service=False)
    assert generic > 0
    assert "Seq Scan" in plan, plan


async def _jit_of_a_scan(dsn: str, schema: str, *, service: bool) -> bool:
    """Whether a statement that can only scan (no index fits it) is JIT-compiled in a session
    that plans without sequential scans: its estimate then carries the planner's penalty."""
    pool = await create_pool(Settings(), dsn, service=service)
    table = f'"{schema}".scanned_{"service" if service else "default"}'
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (n integer NOT NULL)")
            await conn.execute("SET enable_seqscan = off")  # both plan as a service session does
            plan = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM {table} WHERE n > 0"
            )
            await conn.execute("RESET enable_seqscan")
            return "JIT" in json.loads(plan)[0]
    finally:
        await pool.close()


async def test_a_service_session_does_not_jit_compile_a_statement_that_must_scan(
    postgres_dsn: str, pg_schema: str
) -> None:
    assert not await _jit_of_a_scan(postgres_dsn, pg_schema, service=True)


async def test_without_the_service_settings_that_scan_is_jit_compiled(
    postgres_dsn: str, pg_schema: str
) -> None:
    """What `jit = off` avoids (an inbox prune compiled on every run), shown on the same
    PostgreSQL; a PostgreSQL built without JIT fails here, and the setting is moot there."""
    assert await _jit_of_a_scan(postgres_dsn, pg_schema, service=False)
