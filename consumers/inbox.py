"""The inbox: which events a consumer group has applied, recorded in the same transaction
as their effects. Primary key (consumer group, event id): a redelivered event finds its row
and is skipped, so an effect is applied once however often Kafka delivers it.

The unit of work claims through the `Inbox` protocol. `TableInbox` is the inbox table every
participant has; a service whose own state already records each event id once (the
tracker's timeline) can claim there instead and write one row per event, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import asyncpg

from consumers.handlers import lock_keys_sql
from producers import migrate
from producers.db import DbConnection, qualified
from schemas.envelope import Envelope
from schemas.messages import Message

log = logging.getLogger(__name__)

# an event to claim, and the topic it was first published to (not a retry lane's)
Delivered = tuple[Envelope[Message], str]


class Inbox(Protocol):
    """Where a consumer group records the events it applied."""

    async def claim(
        self, conn: DbConnection, events: Sequence[Delivered], *, lock: Collection[str] = ()
    ) -> set[str]:
        """Record `events` as applied, in one statement of the open transaction; returns the
        ids claimed now (the others were applied before). `lock`: keys whose advisory locks
        (`consumers.handlers.lock_keys_sql`, scoped by the schema) the same statement takes
        before it claims the first row."""
        ...


class TableInbox:
    """The group's rows in the schema's inbox table (`ddl`), pruned after the retention."""

    def __init__(self, schema: str, group: str) -> None:
        self.schema = schema
        self.group = group

    async def claim(
        self, conn: DbConnection, events: Sequence[Delivered], *, lock: Collection[str] = ()
    ) -> set[str]:
        return await claim_many(
            conn,
            self.schema,
            self.group,
            [(envelope.id, envelope.type, topic) for envelope, topic in events],
            after=lock_keys_sql("$5::text", "$6") if lock else None,
            args=(self.schema, sorted(set(lock))) if lock else (),
        )


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
    # `now()`, not `clock_timestamp()`: a stable cutoff is an index condition, a volatile one
    # is a test of every row
    while True:
        status = await conn.execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
            " WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2))",
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
