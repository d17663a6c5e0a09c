"""Inbox claims into an index with history: random event ids (UUIDv4) against time-ordered
ones (UUIDv7, what `schemas.envelope.new_event_id` makes).

    python -m benchmarks ids

Two inbox tables (the real DDL), each filled with `history` rows of its kind of id, then the
same claims (`consumers.inbox.claim_many`, `batch` ids a transaction) into each, every round
right after a CHECKPOINT — where a service's inbox is between checkpoints. Per claimed row: WAL
bytes and full-page images (pg_stat_wal), index blocks read from outside shared buffers
(pg_statio) and wall time. Uses SAGALINE_POSTGRES_DSN, or starts the local stack.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from consumers import inbox
from sagaline.bootstrap import endpoints
from sagaline.settings import Settings
from schemas.envelope import new_event_id

MESSAGE_TYPE, TOPIC = "sagaline.order.OrderPlaced.v1", "sagaline.orders"
KINDS: dict[str, tuple[str, Callable[[], str]]] = {
    # name -> (the history's ids in SQL, the claims' ids)
    "uuid4": ("gen_random_uuid()::text", lambda: str(uuid.uuid4())),
    "uuid7": (
        "lpad(to_hex(1700000000000 + g / 10), 12, '0') || substr(gen_random_uuid()::text, 13)",
        new_event_id,
    ),
}


async def _counters(conn: asyncpg.Connection[Any], schemas: list[str]) -> dict[str, float]:
    """Cumulative statistics, this backend's flushed first (they are otherwise sent lazily)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(1.1)
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    wal = await conn.fetchrow("SELECT wal_bytes, wal_fpi FROM pg_stat_wal")
    read = await conn.fetchval(
        "SELECT coalesce(sum(idx_blks_read), 0) FROM pg_statio_user_indexes WHERE schemaname = ANY($1)",
        schemas,
    )
    assert wal is not None
    return {"wal_bytes": float(wal["wal_bytes"]), "fpi": float(wal["wal_fpi"]), "index_reads": float(read)}


async def run_async(history: int = 2_000_000, claims: int = 30_000, batch: int = 100) -> dict[str, Any]:
    ends = await endpoints(Settings(), start_local=True)
    conn = await asyncpg.connect(ends.postgres_dsn)
    token = uuid.uuid4().hex[:6]
    schemas = {kind: f"bench_ids_{token}_{kind}" for kind in KINDS}
    results: dict[str, Any] = {"history_rows": history, "claimed_rows": claims}
    try:
        for kind, (history_sql, _) in KINDS.items():
            await inbox.install(conn, schemas[kind])
            await conn.execute(
                f'INSERT INTO "{schemas[kind]}".inbox (consumer_group, event_id, message_type, source_topic)'
                f" SELECT 'payment', {history_sql}, $1, $2 FROM generate_series(1, {history}) AS g",
                MESSAGE_TYPE,
                TOPIC,
            )
            await conn.execute(f'VACUUM ANALYZE "{schemas[kind]}".inbox')
        for kind, (_, make_id) in KINDS.items():
            await conn.execute("CHECKPOINT")
            before = await _counters(conn, list(schemas.values()))
            started = time.perf_counter()
            for _ in range(claims // batch):
                events = [(make_id(), MESSAGE_TYPE, TOPIC) for _ in range(batch)]
                async with conn.transaction():
                    await inbox.claim_many(conn, schemas[kind], "payment", events)
            seconds = time.perf_counter() - started
            after = await _counters(conn, list(schemas.values()))
            rows = claims // batch * batch
            results[kind] = {
                "wal_bytes_per_row": round((after["wal_bytes"] - before["wal_bytes"]) / rows),
                "full_pages_per_row": round((after["fpi"] - before["fpi"]) / rows, 3),
                "index_reads_per_row": round((after["index_reads"] - before["index_reads"]) / rows, 3),
                "us_per_row": round(seconds / rows * 1e6, 1),
            }
        results["uuid4_over_uuid7"] = {
            name: round(results["uuid4"][name] / ordered, 1) if (ordered := results["uuid7"][name]) else None
            for name in ("wal_bytes_per_row", "us_per_row")
        }
    finally:
        for schema in schemas.values():
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return results


def run() -> dict[str, Any]:
    results = asyncio.run(run_async())
    print(f"ids: {results['claimed_rows']:,} inbox claims into {results['history_rows']:,} rows of history")
    for kind in KINDS:
        r = results[kind]
        print(
            f"  {kind}: {r['us_per_row']} us, {r['wal_bytes_per_row']} B of WAL, "
            f"{r['full_pages_per_row']} full-page images, {r['index_reads_per_row']} index reads per row"
        )
    ratio = results["uuid4_over_uuid7"]
    print(f"  uuid4 / uuid7: time x{ratio['us_per_row']}, WAL x{ratio['wal_bytes_per_row']}")
    return results
