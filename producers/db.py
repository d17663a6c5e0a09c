"""PostgreSQL helpers shared by every layer that keeps tables (outbox, inbox, services)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DbConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
"""A plain connection or one borrowed from a pool: both work everywhere we take one."""

Statement: TypeAlias = "tuple[str, tuple[Any, ...]]"
"""A statement's text (parameters numbered from $1) and its parameter values."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def qualified(schema: str, table: str) -> str:
    """A schema-qualified table name; the schema name is checked, never interpolated raw."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"invalid schema name {schema!r}: lowercase letters, digits and _ only")
    return f'"{schema}".{table}'


_PARAMETER = re.compile(r"\$(\d+)")


def together(statements: Sequence[Statement], final: Statement = ("SELECT 1", ())) -> Statement:
    """One statement that runs `statements` as WITH queries, then `final`: one round trip
    for all of them. Each must be data-modifying (INSERT, UPDATE or DELETE, not itself
    starting with WITH) and number its parameters from $1, which are renumbered here (a `$`
    followed by digits may appear in their text only as a parameter). PostgreSQL runs every
    data-modifying WITH query exactly once and to completion, all against one snapshot: none
    sees another's changes, so they must neither depend on each other nor touch the same
    rows. `final` may start with WITH queries of its own, which join the list. A single
    statement with no `final` is returned as it is."""
    if len(statements) == 1 and final == ("SELECT 1", ()):
        return statements[0]
    parts: list[str] = []
    args: list[Any] = []
    for i, (sql, params) in enumerate(statements):
        parts.append(f"w{i} AS ({_renumbered(sql, len(args))})")
        args.extend(params)
    sql, params = final
    sql = _renumbered(sql, len(args))
    if not parts:
        return sql, tuple(params)
    if sql.startswith("WITH "):  # its own WITH queries join the list
        return f"WITH {', '.join(parts)}, {sql.removeprefix('WITH ')}", (*args, *params)
    return f"WITH {', '.join(parts)} {sql}", (*args, *params)


async def execute(conn: DbConnection, statement: Statement) -> str:
    """Run a `Statement`; returns its status."""
    sql, args = statement
    status: str = await conn.execute(sql, *args)
    return status


def _renumbered(sql: str, offset: int) -> str:
    if not offset:
        return sql
    return _PARAMETER.sub(lambda m: f"${int(m.group(1)) + offset}", sql)
