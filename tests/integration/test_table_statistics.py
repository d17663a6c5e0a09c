"""ANALYZE skips the payload columns of the hot tables: no statement filters, joins or groups
on them, and autovacuum analyses a busy queue table often (docs/benchmarks.md, twentieth
step). The planner keeps the statistics of the columns the statements do use."""

from __future__ import annotations

import asyncpg
import pytest

from producers import migrate, outbox
from producers.db import qualified

pytestmark = pytest.mark.postgres

SKIPPED = {
    ("outbox", "value"),
    ("outbox", "headers"),
    ("outbox", "park_reason"),
    ("orders", "items"),
    ("orders", "request_hash"),
    ("timeline", "summary"),
}


async def _targets(conn: asyncpg.Connection, schema: str, table: str) -> dict[str, int]:
    """Each column's statistics target (-1: the database's default)."""
    rows = await conn.fetch(
        "SELECT attname, attstattarget FROM pg_attribute"
        " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
        qualified(schema, table),
    )
    return {row["attname"]: row["attstattarget"] for row in rows}


async def test_the_hot_tables_skip_only_their_payload_columns(postgres_dsn: str, unique: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    schemas = {"outbox": f"st_{unique}_o", "orders": f"st_{unique}_r", "timeline": f"st_{unique}_t"}
    try:
        await outbox.install(conn, schemas["outbox"])
        await migrate.migrate(conn, schemas["orders"], migrate.load("order"))
        await migrate.migrate(conn, schemas["timeline"], migrate.load("tracker"))
        for table, schema in schemas.items():
            targets = await _targets(conn, schema, table)
            skipped = {column for column, target in targets.items() if target == 0}
            assert skipped == {column for t, column in SKIPPED if t == table}, (table, targets)
    finally:
        for schema in schemas.values():
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_analyze_summarises_the_outbox_columns_the_relay_reads_and_not_the_record(
    postgres_dsn: str, pg_schema: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    table = qualified(pg_schema, "outbox")
    try:
        await outbox.install(conn, pg_schema)
        await conn.execute(
            f"INSERT INTO {table} (event_id, topic, key, value, headers, bucket)"
            " SELECT 'e-' || n, 'orders', convert_to('order-' || n % 50, 'UTF8'),"
            " decode(repeat('00', 400), 'hex'), '[[\"ce_type\", \"x\"]]', n % 64"
            " FROM generate_series(1, 2000) AS n"
        )
        await conn.execute(f"ANALYZE {table}")
        summarised = {
            row["attname"]
            for row in await conn.fetch(
                "SELECT attname FROM pg_stats WHERE schemaname = $1 AND tablename = 'outbox'", pg_schema
            )
        }
    finally:
        await conn.close()
    assert {"id", "key", "bucket", "published_at", "created_at"} <= summarised, summarised
    assert not summarised & {"value", "headers", "park_reason"}, summarised
