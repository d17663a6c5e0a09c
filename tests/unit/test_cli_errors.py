"""Bad CLI input and missing tools give one line saying why and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port


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


def _one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("saga", "list", "--stuck-for", "99999999999999999999d"), "longer than"),
        (("saga", "list", "--stuck-for", "soon"), "not a duration"),
        (("dlq", "edit", "1", "--file", "/nonexistent/[/x]"), "cannot read /nonexistent/[/x]"),
        (("worker", "payment", "--metrics-port", "-1"), "--metrics-port"),
        (("worker", "payment", "--metrics-port", "99999"), "--metrics-port"),
        (("dlq", "index", "--metrics-port", "70000"), "--metrics-port"),
        (("up", "--replicas", "0"), "--replicas"),
        (("bench", "--seconds", "1"), "--seconds"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(args: tuple[str, ...], reason: str) -> None:
    assert reason in _one_line(_cli(*args), 2)


def test_a_payload_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "payload.json"
    bad.write_bytes(b'{"order_id": "\xff"}')
    assert "is not UTF-8" in _one_line(_cli("dlq", "edit", "1", "--file", str(bad)), 2)
    assert "is not UTF-8" in _one_line(_cli("publish", "PlaceOrder", "--file", str(bad)), 2)


def test_an_unreachable_postgresql_is_named_with_its_address_and_no_secret() -> None:
    port = free_port()
    env = {
        **os.environ,
        "SAGALINE_POSTGRES_DSN": f"postgresql://op:hunter2@127.0.0.1:{port}/sagaline",
        "SAGALINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    }
    line = _one_line(_cli("dlq", "list", env=env), 1)
    assert f"PostgreSQL at 127.0.0.1:{port}/sagaline is unreachable" in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    "command", [("saga", "list"), ("outbox", "parked", "--service", "order"), ("dlq", "stats")]
)
def test_a_database_command_without_a_database_asks_only_for_postgresql(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SAGALINE_")}
    env["SAGALINE_STATE_DIR"] = str(tmp_path / "state")  # no local stack there
    line = _one_line(_cli(*command, env=env), 1)
    assert "not running, and PostgreSQL is not configured" in line
    assert "SAGALINE_POSTGRES_DSN" in line
    assert "KAFKA" not in line


def test_an_unreachable_kafka_is_named_once_without_leaking_clients(tmp_path: Path) -> None:
    port = free_port()
    payload = tmp_path / "order.json"
    payload.write_text(
        '{"order_id": "o-1", "idempotency_key": "key-12345", "customer_id": "c-1", "currency": "EUR",'
        ' "items": [{"sku": "s-1", "quantity": 1, "unit_price_minor": 100}]}'
    )
    env = {
        **os.environ,
        "SAGALINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "SAGALINE_POSTGRES_DSN": f"postgresql://op:pw@127.0.0.1:{free_port()}/sagaline",
        "PYTHONWARNINGS": "always",  # an unclosed client would warn
    }
    line = _one_line(_cli("publish", "PlaceOrder", "--file", str(payload), env=env), 1)
    assert f"Kafka at 127.0.0.1:{port} is unreachable" in line


@pytest.mark.parametrize(
    ("owner", "reason"),
    [("bogus=10001", "NAME one of order, payment"), ("order=ten", "UID and GID must be numbers")],
)
def test_a_bad_secrets_owner_is_one_line_and_writes_nothing(tmp_path: Path, owner: str, reason: str) -> None:
    result = _cli("secrets", "init", str(tmp_path / "secrets"), "--owner", owner)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert reason in lines[0]
    assert not (tmp_path / "secrets").exists()
