"""Least privilege in PostgreSQL: one login role per service, owning its schema and nothing
else, plus the DLQ tooling's role and a read-only role (`sagaline db roles`).

| role | owns | may also |
|---|---|---|
| `<prefix>sagaline_order` / `_payment` / `_inventory` / `_tracker` | its service's schema | — |
| `<prefix>sagaline_dlq` | the `dlq` schema | read `tracker.sagas` (a dead letter's saga status) |
| `<prefix>sagaline_reader` | nothing | read every table of the saga's schemas (the invariant check) |

A role has no superuser, CREATEDB, CREATEROLE or replication rights, inherits nothing, and
has no privilege on another service's schema: a compromised payment service cannot read or
write the orders. The admin step creates the schemas and runs every migration first (as the
admin), then hands each schema and its tables to their role; later migrations run as the
owner. Passwords are set as SCRAM-SHA-256 verifiers computed here, so no statement — nor
pg_stat_statements, nor a server log — ever holds a password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from consumers import inbox
from dlq import store
from producers import migrate, outbox
from producers.db import DbConnection
from sagas.config import SERVICES, SagaConfig
from sagas.seed import migrate_all
from sagas.services import SPECS

OWNERS = (*SERVICES, "dlq")
READER = "reader"
SCRAM_ITERATIONS = 4096


def role_name(config: SagaConfig, who: str) -> str:
    """The role of a service (`order`, ..., `dlq`) or of the read-only `reader`."""
    return f"{config.prefix}sagaline_{who}"


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, as
    `\\password` in psql computes it): setting it sends no password to the server."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@dataclass(frozen=True)
class RoleReport:
    role: str
    owns: str | None
    created: bool


async def ensure_roles(conn: DbConnection, config: SagaConfig, passwords: dict[str, str]) -> list[RoleReport]:
    """Create or update every role, schema ownership and grant (idempotent: run it after
    every deployment; it also sets the passwords from `passwords`, role -> password). Runs
    as an admin: a superuser, or a role with CREATEROLE that is a member of the roles."""
    for who in OWNERS:  # every schema and every table exists before it is handed over
        schema = config.schema(who)
        await migrate.ensure_schema(conn, schema)
        if who != "dlq":
            await outbox.install(conn, schema)
            if SPECS[who](config).inbox is None:  # the tracker claims in its timeline
                await inbox.install(conn, schema)
    await migrate_all(conn, config)
    await store.install(conn, config.schema("dlq"))
    database = await conn.fetchval("SELECT current_database()")
    reports = []
    async with conn.transaction():
        for who in (*OWNERS, READER):
            role = role_name(config, who)
            created = await _ensure_login_role(conn, role, passwords[role])
            await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
            owns = config.schema(who) if who != READER else None
            if owns:
                await _hand_over(conn, owns, role)
            reports.append(RoleReport(role, owns, created))
        tracker, dlq = config.schema("tracker"), role_name(config, "dlq")
        await conn.execute(f'GRANT USAGE ON SCHEMA "{tracker}" TO "{dlq}"')
        await conn.execute(f'GRANT SELECT ON "{tracker}".sagas TO "{dlq}"')
        reader = role_name(config, READER)
        for who in OWNERS:
            schema, owner = config.schema(who), role_name(config, who)
            await conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{reader}"')
            await conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{reader}"')
            await conn.execute(  # tables its owner creates later (migrations) are readable too
                f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA "{schema}"'
                f' GRANT SELECT ON TABLES TO "{reader}"'
            )
    return reports


async def _ensure_login_role(conn: DbConnection, role: str, password: str) -> bool:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        await conn.execute(f'CREATE ROLE "{role}"')
    await conn.execute(
        f'ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS'
        f" NOINHERIT PASSWORD '{scram_verifier(password)}'"
    )
    return not exists


async def _hand_over(conn: DbConnection, schema: str, role: str) -> None:
    """`role` owns `schema`, its tables and sequences; nobody else has rights on them."""
    await conn.execute(f'ALTER SCHEMA "{schema}" OWNER TO "{role}"')
    await conn.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC')
    owned = await conn.fetch(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'S', 'v', 'm')"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))",
        schema,
    )
    for row in owned:  # a sequence owned by a column follows its table
        kind = {"S": "SEQUENCE", "v": "VIEW", "m": "MATERIALIZED VIEW"}.get(row["relkind"], "TABLE")
        await conn.execute(f'ALTER {kind} "{schema}"."{row["relname"]}" OWNER TO "{role}"')
