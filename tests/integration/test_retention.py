"""Retention on real PostgreSQL: the inbox, the DLQ index, and the replay guard that keeps
a replay from outliving the inbox that makes it safe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from consumers import inbox
from dlq import actions, store
from dlq.record import parse
from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from schemas.topics import TopicSpec

pytestmark = [pytest.mark.postgres]

DAY = 24 * 3600.0


async def test_the_inbox_forgets_only_rows_older_than_its_retention_in_batches(
    postgres_dsn: str, pg_schema: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await inbox.install(conn, pg_schema)
        await inbox.claim_many(conn, pg_schema, "g", [(f"e-{number}", "T", "t") for number in range(7)])
        await conn.execute(
            f"UPDATE \"{pg_schema}\".inbox SET processed_at = now() - interval '20 days'"
            " WHERE event_id IN ('e-0', 'e-1', 'e-2', 'e-3', 'e-4')"
        )
        assert await inbox.prune(conn, pg_schema, 14 * DAY, batch=2) == 5
        kept = await conn.fetch(f'SELECT event_id FROM "{pg_schema}".inbox ORDER BY event_id')
        assert [r["event_id"] for r in kept] == ["e-5", "e-6"]
    finally:
        await conn.close()


async def _entry(conn: asyncpg.Connection, schema: str, offset: int, last_failure: datetime) -> int:
    headers = [
        ("kafka_dlt-original-consumer-group", b"payment"),
        ("sagaline_last-failure", last_failure.isoformat().encode()),
    ]
    await store.insert(
        conn, schema, dlt_topic=f"{schema}.dlt", partition=0, offset=offset, key=b"o", value=b"{}",
        headers=headers, fields=parse(f"{schema}.dlt", b"o", headers),
    )  # fmt: skip
    entry_id: int = await conn.fetchval(
        f'SELECT id FROM "{schema}".dead_letters WHERE dlt_offset = $1', offset
    )
    return entry_id


async def test_the_dlq_index_keeps_new_entries_and_prunes_finished_old_ones(
    postgres_dsn: str, pg_schema: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await store.install(conn, pg_schema)
        now = datetime.now(UTC)
        fresh_new, old_new, old_resolved, fresh_resolved = [
            await _entry(conn, pg_schema, n, now) for n in range(4)
        ]
        await store.mark(conn, pg_schema, [old_resolved, fresh_resolved], "resolved")
        await conn.execute(
            f"UPDATE \"{pg_schema}\".dead_letters SET indexed_at = now() - interval '100 days',"
            " resolved_at = now() - interval '100 days' WHERE id = ANY($1::bigint[])",
            [old_new, old_resolved],
        )
        assert await store.prune(conn, pg_schema, 90 * DAY) == 1
        left = await conn.fetch(f'SELECT id FROM "{pg_schema}".dead_letters ORDER BY id')
        assert [r["id"] for r in left] == [fresh_new, old_new, fresh_resolved]
    finally:
        await conn.close()


@pytest.mark.kafka
async def test_a_replay_older_than_the_inbox_retention_is_refused(
    postgres_dsn: str, pg_schema: str, kafka: KafkaConnection
) -> None:
    """Setup: two new dead letters, one that failed 20 days ago.
    Fault: a replay of both with a 14-day inbox retention.
    Validate: the old one is reported stale and not sent (the group may have forgotten it
    applied that event); the recent one is sent."""
    await ensure_topics(kafka, [TopicSpec(f"{pg_schema}.retry.1", partitions=1)])
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await store.install(conn, pg_schema)
            old = await _entry(conn, pg_schema, 0, datetime.now(UTC) - timedelta(days=20))
            recent = await _entry(conn, pg_schema, 1, datetime.now(UTC) - timedelta(days=1))
        async with Publisher(kafka, source="/tests") as publisher:
            report = await actions.replay(
                pool,
                publisher,
                pg_schema,
                store.Filter(ids=(old, recent)),
                actor="t",
                inbox_retention_s=14 * DAY,
            )
        assert (report.stale, report.sent) == ([old], 1)
        async with pool.acquire() as conn:
            statuses = await store.select(conn, pg_schema, store.Filter(ids=(old, recent)))
        assert [(e.id, e.status) for e in statuses] == [(old, "new"), (recent, "replayed")]
    finally:
        await pool.close()
