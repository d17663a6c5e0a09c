"""Replicas of a service start at once and install the same schema concurrently: PostgreSQL's
`CREATE ... IF NOT EXISTS` is not safe against a concurrent create of the same name (a
unique violation on pg_namespace or pg_class), so installs and migrations take the schema's
DDL lock."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from consumers import inbox
from producers import migrate, outbox

pytestmark = pytest.mark.postgres


async def test_concurrent_installs_of_one_schema_all_succeed(postgres_dsn: str, unique: str) -> None:
    """Setup: eight connections, a schema that does not exist yet (five times). Fault: all
    eight install the outbox, the inbox and the tracker's migrations at the same moment.
    Validate: none fails, and each migration is recorded once."""
    conns = [await asyncpg.connect(postgres_dsn) for _ in range(8)]
    try:
        for round_ in range(5):
            schema = f"inst_{unique}_{round_}"
            start = asyncio.Event()

            async def install(
                conn: asyncpg.Connection, schema: str = schema, start: asyncio.Event = start
            ) -> None:
                await start.wait()
                await outbox.install(conn, schema)
                await inbox.install(conn, schema)
                await migrate.migrate(conn, schema, migrate.load("tracker"))

            tasks = [asyncio.create_task(install(conn)) for conn in conns]
            await asyncio.sleep(0.05)
            start.set()
            await asyncio.gather(*tasks)
            versions = await conns[0].fetch(f'SELECT version FROM "{schema}".schema_migrations')
            assert [r["version"] for r in versions] == [m.version for m in migrate.load("tracker")]
    finally:
        for conn in conns:
            await conn.close()
