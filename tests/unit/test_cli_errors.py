"""Bad CLI input and missing tools give one line saying why and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagaline", *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_java_is_named_with_an_install_hint(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": str(tmp_path),  # no java, no mvn
        "SAGALINE_CACHE_DIR": str(tmp_path / "cache"),
        "SAGALINE_STATE_DIR": str(tmp_path / "state"),
    }
    result = _cli("dev", "up", env=env)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "java not found: install" in lines[0]


def test_bad_broker_count_is_refused() -> None:
    result = _cli("dev", "up", "--brokers", "2")
    assert result.returncode == 2
    assert "--brokers must be 1 or 3" in result.stderr


def test_unknown_command_exits_non_zero() -> None:
    result = _cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr
