"""The transactional outbox: an event is staged in the same PostgreSQL transaction as the
state change that caused it, so both commit or neither does. The relay publishes it later.

Every outbox lives in its service's schema. Rows are spread over `BUCKETS` buckets by a
stable hash of the record key; a relay owns a bucket for one transaction at a time, which
keeps per-key order while several relays run at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic_core import to_json

from producers import migrate
from producers.db import DbConnection, Statement, execute, qualified, together
from producers.errors import PublishValidationError
from producers.publisher import parse_payload
from schemas.codec import Record, encode
from schemas.envelope import Envelope
from schemas.messages import Message
from schemas.topics import TopicMap

BUCKETS = 64


@dataclass(frozen=True)
class Staged:
    """An outbox row as the relay sends it."""

    id: int
    bucket: int
    event_id: str
    topic: str
    record: Record
    created_at: datetime


class Dispatch(Protocol):
    """The relay of the staging worker's own process (`producers.relay.OutboxRelay`), which
    can send rows right after their commit: dispatch after commit."""

    def eligibility(self) -> tuple[list[int], list[int]]:
        """The buckets it holds, and the ids it got acknowledged but has not marked."""
        ...

    def hand(self, rows: Sequence[Staged]) -> None:
        """Committed rows `eligibility` cleared, to send now."""
        ...


def notify_channel(schema: str) -> str:
    """The channel that wakes `schema`'s relay: one per outbox, so a commit interrupts only
    the relay that publishes it (every listening backend processes every notification of
    its channels in a transaction of its own, and its client wakes to read it)."""
    channel = f"sagaline_outbox_{schema}"
    return channel if len(channel.encode()) <= 63 else f"sagaline_outbox_{zlib.crc32(schema.encode()):08x}"


def ddl(schema: str) -> str:
    table = qualified(schema, "outbox")
    return f"""
    CREATE TABLE IF NOT EXISTS {table} (
        id           bigserial PRIMARY KEY,
        event_id     text        NOT NULL UNIQUE,
        topic        text        NOT NULL,
        key          bytea       NOT NULL,
        value        bytea       NOT NULL,
        headers      jsonb       NOT NULL,
        bucket       smallint    NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
        published_at timestamptz,
        attempts     integer     NOT NULL DEFAULT 0
    );
    -- a row the broker refuses for what it is (too large, invalid) is parked, not retried
    -- forever: the rest of its bucket moves on, and an operator sees it (sagaline outbox parked)
    ALTER TABLE {table} ADD COLUMN IF NOT EXISTS parked_at timestamptz;
    ALTER TABLE {table} ADD COLUMN IF NOT EXISTS park_reason text;
    -- the record itself is never filtered, joined or grouped on: autovacuum's ANALYZE, which
    -- runs often on a queue table, need not sample and summarise it (half its cost)
    ALTER TABLE {table} ALTER COLUMN value SET STATISTICS 0, ALTER COLUMN headers SET STATISTICS 0,
        ALTER COLUMN park_reason SET STATISTICS 0;
    -- what is pending: a bucket's rows in order (the relay's pass), a key's rows (the stage
    -- statement's check for an earlier one). Both are read a bucket or a key at a time with
    -- plain index scans, which mark the entries of published rows dead the first time they
    -- meet them: between two vacuums no read meets one twice
    CREATE INDEX IF NOT EXISTS outbox_pending ON {table} (bucket, id) WHERE published_at IS NULL;
    CREATE INDEX IF NOT EXISTS outbox_pending_key ON {table} (key) WHERE published_at IS NULL;
    CREATE INDEX IF NOT EXISTS outbox_published ON {table} (published_at) WHERE published_at IS NOT NULL;
    """


async def install(conn: DbConnection, schema: str) -> None:
    """Create the outbox table (idempotent, safe when replicas start at once)."""
    await migrate.install(conn, schema, ddl(schema))


def bucket_of(key: bytes) -> int:
    return zlib.crc32(key) % BUCKETS


async def stage(conn: DbConnection, schema: str, envelope: Envelope[Any], topics: TopicMap) -> None:
    """Write `envelope` into the outbox inside the caller's open transaction."""
    await stage_many(conn, schema, [envelope], topics)


async def stage_many(
    conn: DbConnection,
    schema: str,
    envelopes: Sequence[Envelope[Any]],
    topics: TopicMap,
    *,
    along: Sequence[Statement] = (),
    dispatch: Dispatch | None = None,
) -> list[Staged]:
    """Write `envelopes`, in order, into the outbox inside the caller's open transaction:
    one statement however many, rows numbered in the order given (the relay sends a key's
    events in that order). `along`: the transaction's other data-modifying statements, sent
    in the same round trip (`producers.db.together` says what they may do).

    With `dispatch`, returns the rows that relay may send as soon as the transaction has
    committed (hand them over then, never before): those in a bucket it holds whose key has
    no other pending row it has not had acknowledged. Earlier rows of a key are committed
    before a later one is staged (a key's work is serialised by its lock), so this statement
    sees them. The others, and every row without `dispatch`, go the NOTIFY way: the relay is
    woken at the commit (only if the transaction commits; repeats in one transaction fold
    into one) and finds them with a pass."""
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.stage must run inside the caller's transaction")
    if not envelopes:
        if along:
            await execute(conn, together(along))
        return []
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    records: dict[str, tuple[str, Record]] = {}
    for envelope in envelopes:
        record = encode(envelope)
        key = envelope.subject.encode()
        # pydantic's serializer: a fifth of the json module's time (the relay reads it back with from_json)
        headers = to_json([[name, (value or b"").decode()] for name, value in record.headers]).decode()
        topic = topics.topic_for(type(envelope.data))
        row = (envelope.id, topic, key, record.value, headers, bucket_of(key))
        for column, value in zip(columns, row, strict=True):
            column.append(value)
        records[envelope.id] = (topic, record)
    table = qualified(schema, "outbox")
    insert = (  # parameters $1 to $6
        f"INSERT INTO {table} (event_id, topic, key, value, headers, bucket)"
        " SELECT e.id, e.topic, e.key, e.value, e.headers::jsonb, e.bucket"
        " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[], $6::smallint[])"
        " WITH ORDINALITY AS e(id, topic, key, value, headers, bucket, n) ORDER BY e.n"
    )
    held, acked = dispatch.eligibility() if dispatch else ([], [])
    if not held:  # one round trip: the rows (and `along`) and the NOTIFY
        notify: Statement = ("SELECT pg_notify($1, $2)", (notify_channel(schema), schema))
        await execute(conn, together([*along, (insert, columns)], notify))
        return []
    # the rows, and which of them wait: a bucket the relay does not hold, or another pending
    # row of the key it has not had acknowledged; a NOTIFY only if any waits
    check = (
        f"WITH staged AS ({insert} RETURNING id, bucket, key, event_id, created_at),"
        " checked AS MATERIALIZED (SELECT s.*, (s.bucket <> ALL($7::smallint[]) OR EXISTS (SELECT 1"
        f"   FROM {table} AS o WHERE o.key = s.key AND o.published_at IS NULL"
        "   AND o.parked_at IS NULL AND o.id <> ALL($8::bigint[]))) AS waits FROM staged AS s)"
        " SELECT c.id, c.bucket, c.event_id, c.created_at, c.waits FROM checked AS c,"
        " (SELECT count(pg_notify($9, $10)) FROM checked WHERE waits) AS woken"
    )
    statement = together(along, (check, (*columns, held, acked, notify_channel(schema), schema)))
    rows = await conn.fetch(statement[0], *statement[1])
    return sorted(
        (
            Staged(row["id"], row["bucket"], row["event_id"], *records[row["event_id"]], row["created_at"])
            for row in rows
            if not row["waits"]
        ),
        key=lambda staged: staged.id,
    )


async def stage_message(
    conn: DbConnection,
    schema: str,
    message: Message,
    *,
    source: str,
    topics: TopicMap,
    caused_by: Envelope[Message] | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Envelope[Message]:
    """Wrap `message` in a new envelope (trace context: the one given, else the cause's) and
    stage it."""
    envelope: Envelope[Message] = Envelope.new(
        message, source, caused_by=caused_by, traceparent=traceparent, tracestate=tracestate
    )
    await stage(conn, schema, envelope, topics)
    return envelope


async def stage_payload(
    conn: DbConnection,
    schema: str,
    type_name: str,
    payload: Any,
    *,
    source: str,
    topics: TopicMap,
) -> Envelope[Message]:
    """Validate a JSON-like payload, then stage it. An invalid one raises
    `PublishValidationError` (with field paths) before anything is written."""
    message = parse_payload(type_name, payload)
    return await stage_message(conn, schema, message, source=source, topics=topics)


__all__ = [
    "BUCKETS",
    "PublishValidationError",
    "install",
    "stage",
    "stage_many",
    "stage_message",
    "stage_payload",
]
