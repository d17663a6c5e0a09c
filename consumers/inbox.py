"""The inbox: which events a consumer group has applied, recorded in the same transaction
as their effects. Primary key (consumer group, event id): a redelivered event finds its row
and is skipped, so an effect is applied once however often Kafka delivers it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from producers import migrate
from producers.db import DbConnection, qualified

log = logging.getLogger(__name__)


def ddl(schema: str) -> str:
    table = qualified(schema, "inbox")
    return f"""
    CREATE TABLE IF NOT EXISTS {table} (
        consumer_group text        NOT NULL,
        event_id       text        NOT NULL,
        message_type   text        NOT NULL,
        source_topic   text        NOT NULL,
        processed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (consumer_group, event_id)
    );
    CREATE INDEX IF NOT EXISTS inbox_processed_at ON {table} (processed_at);
    """


async def install(conn: DbConnection, schema: str) -> None:
    """Create the inbox table (idempotent, safe when replicas start at once)."""
    await migrate.install(conn, schema, ddl(schema))


async def claim(
    conn: DbConnection, schema: str, group: str, event_id: str, message_type: str, topic: str
) -> bool:
    """Record the event as applied by `group`; False if it already was (a duplicate)."""
    status = await conn.execute(
        f"INSERT INTO {qualified(schema, 'inbox')} (consumer_group, event_id, message_type, source_topic)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        group,
        event_id,
        message_type,
        topic,
    )
    return status == "INSERT 0 1"


async def claim_many(
    conn: DbConnection,
    schema: str,
    group: str,
    events: list[tuple[str, str, str]],
    *,
    after: str | None = None,
    args: tuple[Any, ...] = (),
) -> set[str]:
    """Claim (event id, message type, topic) rows in one statement; returns the ids claimed
    now — the others were applied before. `after`: a query (parameters from $5 on, values
    `args`) run to completion before the first row is claimed, in the same round trip — the
    unit of work takes its key locks this way."""
    first = f" WHERE ({after}) IS NOT NULL" if after else ""
    rows = await conn.fetch(
        f"INSERT INTO {qualified(schema, 'inbox')} (consumer_group, event_id, message_type, source_topic)"
        " SELECT $1, e.id, e.type, e.topic"
        f" FROM unnest($2::text[], $3::text[], $4::text[]) AS e(id, type, topic){first}"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        group,
        [e[0] for e in events],
        [e[1] for e in events],
        [e[2] for e in events],
        *args,
    )
    return {row["event_id"] for row in rows}


PRUNE_BATCH = 10_000


async def prune(conn: DbConnection, schema: str, retention_s: float, *, batch: int = PRUNE_BATCH) -> int:
    """Forget rows older than the retention, which must exceed any redelivery window (retry
    lanes, outages, replays: `dlq replay` refuses entries older than it). Deletes in batches,
    each its own short statement, so pruning never holds many row locks for long."""
    table = qualified(schema, "inbox")
    removed = 0
    while True:
        status = await conn.execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
            " WHERE processed_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2))",
            retention_s,
            batch,
        )
        deleted = int(status.split()[-1])
        removed += deleted
        if deleted < batch:
            return removed


async def prune_loop(
    pool: asyncpg.Pool[Any], schema: str, retention_s: float, interval_s: float, stop: asyncio.Event
) -> None:
    """Prune every `interval_s` until `stop` (a service's background loop)."""
    while not stop.is_set():
        async with pool.acquire() as conn:
            removed = await prune(conn, schema, retention_s)
        if removed:
            log.info("%s: pruned %d inbox rows older than %.0fs", schema, removed, retention_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
