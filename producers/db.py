"""PostgreSQL helpers shared by every layer that keeps tables (outbox, inbox, services)."""

from __future__ import annotations

import re
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

DbConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
"""A plain connection or one borrowed from a pool: both work everywhere we take one."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def qualified(schema: str, table: str) -> str:
    """A schema-qualified table name; the schema name is checked, never interpolated raw."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"invalid schema name {schema!r}: lowercase letters, digits and _ only")
    return f'"{schema}".{table}'
