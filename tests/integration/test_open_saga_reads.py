"""The tracker's reads of open sagas (the gauges every few seconds, `saga list --stuck-for`)
against a history of ended sagas in a real PostgreSQL: they find the open ones, and they
cost what the open sagas cost, however many sagas the table remembers. PostgreSQL must
estimate them as the few rows they are: a `status NOT IN (terminal...)` condition was
estimated at a sixth of the table and planned as a parallel scan (docs/benchmarks.md,
twenty-sixth step)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from producers import migrate
from producers.db import qualified
from sagas.metrics import OpenSagaGauges, open_sagas_sql
from sagas.tracker import OPEN_STEPS, list_sagas, open_status_sql

pytestmark = pytest.mark.postgres

ENDED = 60_000
STUCK = ["stuck-1", "stuck-2", "stuck-3"]  # oldest first


@pytest.fixture
async def history(postgres_dsn: str, unique: str) -> AsyncIterator[str]:
    """A tracker schema (`os<unique>_tracker`) with many ended sagas and five open ones,
    three of them unchanged for ten minutes or more; analysed, as autovacuum would."""
    schema = f"os{unique}_tracker"
    table = qualified(schema, "sagas")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await migrate.migrate(conn, schema, migrate.load("tracker"))
        await conn.execute(
            f"INSERT INTO {table} (order_id, saga_id, status, step, started_at, updated_at, last_event)"
            " SELECT 'o-' || n, 's-' || n, CASE WHEN n % 5 = 0 THEN 'CANCELLED' ELSE 'CONFIRMED' END,"
            " 'done', now() - interval '2 days', now() - interval '2 days', 'e-' || n"
            " FROM generate_series(1, $1) AS n",
            ENDED,
        )
        await conn.execute(
            f"INSERT INTO {table} (order_id, saga_id, status, step, started_at, updated_at, last_event)"
            " SELECT o, 's', st, step, now() - age, now() - age, 'e' FROM (VALUES"
            " ('stuck-1', 'AWAITING_STOCK', 'inventory: reserving', interval '1 hour'),"
            " ('stuck-2', 'AWAITING_STOCK', 'inventory: reserving', interval '20 minutes'),"
            " ('stuck-3', 'CANCELLING', 'compensating: refund and release', interval '10 minutes'),"
            " ('moving-1', 'PENDING_PAYMENT', 'payment: charging', interval '0'),"
            " ('moving-2', 'REQUESTED', 'order: accepting', interval '0')) AS v(o, st, step, age)"
        )
        await conn.execute(f"ANALYZE {table}")
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


async def test_the_gauges_read_the_open_sagas_as_the_few_rows_they_are(
    postgres_dsn: str, history: str
) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    assert pool is not None
    registry = CollectorRegistry()
    try:
        explained = await pool.fetchval(
            f"EXPLAIN (FORMAT JSON) {open_sagas_sql(history, open_status_sql())}", 300.0
        )
        await OpenSagaGauges(registry, OPEN_STEPS).refresh(pool, history, open_status_sql(), 300.0)
    finally:
        await pool.close()

    nodes = _nodes(json.loads(explained)[0]["Plan"])
    scans = [(node["Node Type"], node["Plan Rows"]) for node in nodes if node["Node Type"].endswith("Scan")]
    assert scans
    assert all(kind != "Seq Scan" and rows < 100 for kind, rows in scans), scans
    assert not [n for n in nodes if "Workers Planned" in n or n["Node Type"].startswith("Gather")], nodes

    def gauge(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert gauge("sagaline_sagas_open", step="inventory: reserving") == 2
    assert gauge("sagaline_sagas_open", step="compensating: refund and release") == 1
    assert gauge("sagaline_sagas_open", step="payment: charging") == 1
    assert gauge("sagaline_sagas_open", step="order: accepting") == 1
    assert gauge("sagaline_sagas_open", step="order: confirming") == 0
    assert gauge("sagaline_sagas_stuck") == 3
    oldest = gauge("sagaline_sagas_oldest_open_age_seconds")
    assert oldest is not None
    assert 3_590 < oldest < 3_700


async def test_listing_the_stuck_sagas_is_estimated_as_the_few_open_sagas(
    postgres_dsn: str, history: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        stuck = await list_sagas(conn, history, statuses=[], stuck_for=timedelta(minutes=5), limit=10)
        recent = await list_sagas(conn, history, statuses=[], stuck_for=timedelta(minutes=15), limit=10)
        cancelling = await list_sagas(conn, history, statuses=["CANCELLING"], stuck_for=None, limit=10)
        explained = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) SELECT * FROM {qualified(history, 'sagas')}"
            f" WHERE {open_status_sql()} AND updated_at < now() - interval '5 minutes'"
        )
    finally:
        await conn.close()
    assert [row.order_id for row in stuck] == STUCK
    assert [row.order_id for row in recent] == STUCK[:2]
    assert [row.order_id for row in cancelling] == ["stuck-3"]
    scans = [(n["Node Type"], n["Plan Rows"]) for n in _nodes(json.loads(explained)[0]["Plan"])]
    assert all(kind != "Seq Scan" and rows < 100 for kind, rows in scans if kind.endswith("Scan")), scans


def test_saga_list_stuck_for_finds_them_from_the_cli_with_only_postgresql(
    postgres_dsn: str, history: str, tmp_path: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SAGALINE_")}
    env |= {
        "SAGALINE_STATE_DIR": str(tmp_path / "state"),  # no local stack, no Kafka: not needed
        "SAGALINE_POSTGRES_DSN": postgres_dsn,
        "SAGALINE_SAGA_PREFIX": history.removesuffix("tracker"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sagaline", "saga", "list", "--stuck-for", "5m", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [row["order_id"] for row in listed] == STUCK
    assert [row["status"] for row in listed] == ["AWAITING_STOCK", "AWAITING_STOCK", "CANCELLING"]
