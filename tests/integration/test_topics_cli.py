"""`sagaline topics ensure` against the real broker, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sagas.config import SERVICES

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_topics_ensure_creates_the_map_then_is_idempotent(
    kafka_bootstrap: str, postgres_dsn: str, unique: str
) -> None:
    env = {**os.environ, "SAGALINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "SAGALINE_POSTGRES_DSN": postgres_dsn}
    prefix = f"it{unique}."
    cmd = [
        sys.executable,
        "-m",
        "sagaline",
        "topics",
        "ensure",
        "--prefix",
        prefix,
        "--partitions",
        "2",
        "--json",
    ]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)["created"]
    lanes = [f"{group}.{lane}" for group in SERVICES for lane in ("retry.1", "retry.2", "retry.3", "dlt")]
    assert sorted(created) == sorted(
        f"{prefix}{t}"
        for t in ("sagaline.ingress", "orders.events", "payments.events", "inventory.events", *lanes)
    )
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["created"] == []
    assert len(json.loads(second.stdout)["unchanged"]) == 4 + len(lanes)

    drift_cmd = [*cmd[:-2], "4", "--json"]
    drifted = subprocess.run(drift_cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert drifted.returncode == 1
    assert all(p == ["partitions 2 < 4"] for p in json.loads(drifted.stdout)["drift"].values())
