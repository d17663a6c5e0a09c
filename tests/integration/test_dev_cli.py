"""`sagaline dev up|status|down` from the outside, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from sagaline.localstack import postgres, process
from tests.support import STACK_PORTS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagaline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_up_is_idempotent_status_reports_versions_and_down_leaves_nothing(unique: str) -> None:
    state = ROOT / ".sagaline" / f"cli-{unique}"
    env = {
        **os.environ,
        "SAGALINE_STATE_DIR": str(state),
        "SAGALINE_LOCAL_KAFKA_PORT": str(STACK_PORTS["cli"][0]),
        "SAGALINE_LOCAL_POSTGRES_PORT": str(STACK_PORTS["cli"][1]),
        "SAGALINE_LOCAL_KAFKA_HEAP": "512m",
    }
    try:
        first = _cli(env, "dev", "up", "--json")
        assert first.returncode == 0, first.stderr
        assert set(json.loads(first.stdout)["started"]) == {"kafka node 1", "postgresql"}

        status = _cli(env, "dev", "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        components = {c["name"]: c for c in json.loads(status.stdout)["components"]}
        assert components["kafka"]["version"] == "3.9.2"
        assert components["kafka"]["detail"].startswith("KRaft, 1/1")
        assert components["postgresql"]["ready"] is True
        durable = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        expected = {**postgres.WORKLOAD_SETTINGS, **durable}
        assert asyncio.run(_settings(STACK_PORTS["cli"][1], list(expected))) == expected

        again = _cli(env, "dev", "up", "--json")
        assert again.returncode == 0, again.stderr
        second = json.loads(again.stdout)
        assert second["started"] == []
        assert second["downloaded_jars"] is False  # cached jars: no Maven the second time

        pids = [int(p.read_text()) for p in state.rglob("kafka.pid")]
        pids.append(int((state / "postgres" / "data" / "postmaster.pid").read_text().split()[0]))
        down = _cli(env, "dev", "down", "--json")
        assert down.returncode == 0, down.stderr
        assert set(json.loads(down.stdout)["stopped"]) == {"kafka node 1", "postgresql"}
        assert [pid for pid in pids if process.is_alive(pid, "")] == []
        assert _cli(env, "dev", "status", "--json").returncode == 1
    finally:
        _cli(env, "dev", "down")
        shutil.rmtree(state, ignore_errors=True)


async def _settings(port: int, names: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(
        f"postgresql://{postgres.USER}:{postgres.PASSWORD}@127.0.0.1:{port}/{postgres.DATABASE}"
    )
    try:
        return {name: await conn.fetchval("SELECT current_setting($1)", name) for name in names}
    finally:
        await conn.close()


def test_a_cluster_id_starting_with_a_dash_formats(tmp_path: Path) -> None:
    """URL-safe base64 ids start with '-' one time in 64; the storage tool must not read it as a flag."""
    from sagaline.localstack import kafka

    libs, _ = kafka.ensure_jars(
        Path(os.environ.get("SAGALINE_CACHE_DIR", Path.home() / ".cache" / "sagaline"))
    )
    [node] = kafka.nodes_for(tmp_path, 1, 59092)
    kafka.write_config(node, [node])
    kafka.format_storage(libs, node, "-pnpaKCdTaG7qVB1anF_oQ")  # an id that broke a CI run
    assert "cluster.id=-pnpaKCdTaG7qVB1anF_oQ" in (node.data_dir / "meta.properties").read_text()
