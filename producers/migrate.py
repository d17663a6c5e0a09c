"""A small migrator: plain SQL files applied in order, once, per service schema.

`<package>/<service>/NNN_name.sql` (e.g. `sagas/migrations/order/001_orders.sql`), with
`{schema}` standing for the service's schema. Applied versions are recorded in
`<schema>.schema_migrations`; an advisory lock per schema serialises concurrent migrators
and installers (several replicas starting at once: PostgreSQL's `CREATE ... IF NOT EXISTS`
is not safe against a concurrent create of the same name).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib import resources

from producers.db import DbConnection, qualified


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load(service: str, package: str = "sagas.migrations") -> list[Migration]:
    """Migrations of `service` (a folder of `package`; `""` for the package itself)."""
    folder = resources.files(package).joinpath(service) if service else resources.files(package)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def lock_schema(conn: DbConnection, schema: str) -> None:
    """Hold the schema's DDL lock until the current transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(f"migrate:{schema}".encode()) - 2**31)


async def ensure_schema(conn: DbConnection, schema: str) -> None:
    """Create `schema` unless it exists. Not `CREATE SCHEMA IF NOT EXISTS`: PostgreSQL checks
    the database's CREATE privilege before it looks, and a service running as the role that
    owns its schema (docs/operations.md, least privilege) has no such privilege."""
    if await conn.fetchval("SELECT to_regnamespace($1) IS NULL", f'"{schema}"'):
        await conn.execute(f'CREATE SCHEMA "{schema}"')


async def install(conn: DbConnection, schema: str, ddl: str) -> None:
    """Run idempotent DDL (`CREATE ... IF NOT EXISTS`) in `schema`, creating it if needed,
    under the schema's DDL lock."""
    async with conn.transaction():
        await lock_schema(conn, schema)
        await ensure_schema(conn, schema)
        await conn.execute(ddl)


async def migrate(conn: DbConnection, schema: str, migrations: list[Migration]) -> list[int]:
    """Apply what is missing; returns the versions applied now."""
    table = qualified(schema, "schema_migrations")
    applied_now: list[int] = []
    async with conn.transaction():
        await lock_schema(conn, schema)
        await ensure_schema(conn, schema)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch(f"SELECT version FROM {table}")}
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql.replace("{schema}", f'"{schema}"'))
            await conn.execute(
                f"INSERT INTO {table} (version, name) VALUES ($1, $2)", migration.version, migration.name
            )
            applied_now.append(migration.version)
    return applied_now
