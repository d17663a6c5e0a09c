"""The DLQ index in PostgreSQL: one row per dead-letter record of every group, an audit
trail of every operator action, and the filters operators select entries with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from dlq.record import DeadLetterFields, headers_from_json, headers_to_json
from producers import migrate
from producers.db import DbConnection, qualified
from schemas.codec import Headers

STATUSES = ("new", "replayed", "resolved", "archived")


async def install(conn: DbConnection, schema: str) -> None:
    await migrate.migrate(conn, schema, migrate.load("", "dlq.migrations"))


@dataclass(frozen=True)
class Filter:
    """Which entries an action applies to. Empty fields do not filter."""

    ids: tuple[int, ...] = ()
    group: str | None = None
    source_topic: str | None = None
    event_type: str | None = None
    exception_type: str | None = None
    saga_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    statuses: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []

        def add(sql: str, value: Any) -> None:
            args.append(value)
            clauses.append(sql.format(f"${len(args)}"))

        if self.ids:
            add("id = ANY({}::bigint[])", list(self.ids))
        for column in ("group", "source_topic", "event_type", "exception_type", "saga_id"):
            value = getattr(self, column)
            if value is not None:
                add(f"{'consumer_group' if column == 'group' else column} = {{}}", value)
        if self.since is not None:
            add("last_failure >= {}", self.since)
        if self.until is not None:
            add("last_failure < {}", self.until)
        if self.statuses:
            add("status = ANY({}::text[])", list(self.statuses))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items() if v}


@dataclass
class Entry:
    id: int
    status: str
    consumer_group: str
    dlt_topic: str
    dlt_partition: int
    dlt_offset: int
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    event_id: str | None
    event_type: str | None
    saga_id: str | None
    record_key: str | None
    failure_class: str | None
    exception_type: str | None
    exception_message: str | None
    attempts: int
    first_failure: datetime | None
    last_failure: datetime | None
    replay_of: int | None
    replay_count: int
    replayed_at: datetime | None = None
    indexed_at: datetime | None = None
    stacktrace: str | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    value: bytes | None = field(default=None, repr=False)
    headers: Headers = field(default_factory=list, repr=False)


_SUMMARY = (
    "id, status, consumer_group, dlt_topic, dlt_partition, dlt_offset, source_topic, source_partition,"
    " source_offset, event_id, event_type, saga_id, record_key, failure_class, exception_type,"
    " exception_message, attempts, first_failure, last_failure, replay_of, replay_count, replayed_at,"
    " indexed_at"
)


def _entry(row: asyncpg.Record, full: bool) -> Entry:
    data = dict(row)
    if full:
        data["headers"] = headers_from_json(json.loads(data["headers"]))
        data["key"] = bytes(data["key"]) if data["key"] is not None else None
        data["value"] = bytes(data["value"]) if data["value"] is not None else None
    return Entry(**data)


async def insert(
    conn: DbConnection,
    schema: str,
    *,
    dlt_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    fields: DeadLetterFields,
) -> None:
    table = qualified(schema, "dead_letters")
    await conn.execute(
        f"INSERT INTO {table} (dlt_topic, dlt_partition, dlt_offset, key, value, headers,"
        " consumer_group, source_topic, source_partition, source_offset, source_timestamp, event_id,"
        " event_type, saga_id, record_key, failure_class, exception_type, exception_message, stacktrace,"
        " attempts, first_failure, last_failure, replay_of)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,"
        f" $19, $20, $21, $22, (SELECT id FROM {table} WHERE id = $23))"
        " ON CONFLICT (dlt_topic, dlt_partition, dlt_offset) DO NOTHING",
        dlt_topic,
        partition,
        offset,
        key,
        value,
        json.dumps(headers_to_json(headers)),
        *asdict(fields).values(),
    )


Lock = Literal["wait", "skip"]


async def select(
    conn: DbConnection,
    schema: str,
    flt: Filter,
    *,
    limit: int = 100,
    offset: int = 0,
    full: bool = False,
    lock: Lock | None = None,
) -> list[Entry]:
    """Entries matching `flt`, oldest first. `lock` (inside a transaction) takes their row
    locks until it ends: "wait" for an action's own entry, "skip" to pass over entries
    another action holds, so two actions never work on one entry at once."""
    where, args = flt.where()
    columns = _SUMMARY + ", stacktrace, key, value, headers" if full else _SUMMARY
    locking = {None: "", "wait": " FOR UPDATE", "skip": " FOR UPDATE SKIP LOCKED"}[lock]
    rows = await conn.fetch(
        f"SELECT {columns} FROM {qualified(schema, 'dead_letters')}{where}"
        f" ORDER BY id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}{locking}",
        *args,
        limit,
        offset,
    )
    return [_entry(r, full) for r in rows]


async def count(conn: DbConnection, schema: str, flt: Filter) -> int:
    where, args = flt.where()
    total: int = await conn.fetchval(
        f"SELECT count(*) FROM {qualified(schema, 'dead_letters')}{where}", *args
    )
    return total


async def stats(conn: DbConnection, schema: str, flt: Filter) -> list[dict[str, Any]]:
    where, args = flt.where()
    rows = await conn.fetch(
        "SELECT consumer_group, exception_type, event_type, count(*) AS count,"
        " min(COALESCE(first_failure, indexed_at)) AS first_seen,"
        " max(COALESCE(last_failure, indexed_at)) AS last_seen,"
        " array_agg(DISTINCT status) AS statuses"
        f" FROM {qualified(schema, 'dead_letters')}{where}"
        " GROUP BY 1, 2, 3 ORDER BY count(*) DESC, 1, 2, 3",
        *args,
    )
    return [dict(r) for r in rows]


async def mark(conn: DbConnection, schema: str, ids: list[int], status: str) -> None:
    stamp = {"replayed": "replayed_at", "resolved": "resolved_at"}.get(status)
    extra = f", {stamp} = clock_timestamp()" if stamp else ""
    bump = ", replay_count = replay_count + 1" if status == "replayed" else ""
    await conn.execute(
        f"UPDATE {qualified(schema, 'dead_letters')} SET status = $2{extra}{bump}"
        " WHERE id = ANY($1::bigint[])",
        ids,
        status,
    )


async def prune(conn: DbConnection, schema: str, retention_s: float) -> int:
    """Delete entries an operator is done with (replayed, resolved, archived) whose last
    change is older than the retention; `new` entries stay until someone acts on them."""
    table = qualified(schema, "dead_letters")
    old = (
        "status IN ('replayed', 'resolved', 'archived') AND GREATEST(indexed_at, replayed_at, resolved_at)"
        " < clock_timestamp() - make_interval(secs => $1)"
    )
    await conn.execute(
        f"UPDATE {table} SET replay_of = NULL WHERE replay_of IN (SELECT id FROM {table} WHERE {old})",
        retention_s,
    )
    status = await conn.execute(f"DELETE FROM {table} WHERE {old}", retention_s)
    return int(status.split()[-1])


async def delete(conn: DbConnection, schema: str, flt: Filter) -> int:
    where, args = flt.where()
    table = qualified(schema, "dead_letters")
    # entries linked to a purged one keep their own row; the link is cleared
    await conn.execute(
        f"UPDATE {table} SET replay_of = NULL WHERE replay_of IN (SELECT id FROM {table}{where})", *args
    )
    status = await conn.execute(f"DELETE FROM {table}{where}", *args)
    return int(status.split()[-1])


async def audit(
    conn: DbConnection,
    schema: str,
    *,
    actor: str,
    action: str,
    dry_run: bool,
    flt: Filter,
    count: int,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        f"INSERT INTO {qualified(schema, 'audit')} (actor, action, dry_run, filter, count, details)"
        " VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb)",
        actor,
        action,
        dry_run,
        json.dumps(flt.as_dict()),
        count,
        json.dumps(details or {}, default=str),
    )
