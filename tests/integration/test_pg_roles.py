"""Least privilege in PostgreSQL (`sagaline db roles`), on a real server: each denial is
PostgreSQL's own error, and the saga still runs with every service as its own role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from producers.connection import KafkaConnection
from sagaline import pgroles, secretfiles
from sagas import invariants
from sagas.config import SagaConfig
from tests.saga_support import SagaPlatform, order

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def saga(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path
) -> AsyncIterator[SagaPlatform]:
    platform = SagaPlatform(kafka, postgres_dsn, unique)
    await platform.setup([("alice", 100_000)], [("mug", 10)])
    platform.role_passwords_dir = tmp_path / "pg-passwords"
    names = [pgroles.role_name(platform.config, who) for who in (*pgroles.OWNERS, pgroles.READER)]
    secretfiles.ensure_password_files(platform.role_passwords_dir, names)
    assert platform.pool is not None
    async with platform.pool.acquire() as conn:
        await pgroles.ensure_roles(conn, platform.config, _passwords(platform))
    yield platform
    await platform.close()


def _passwords(saga: SagaPlatform) -> dict[str, str]:
    assert saga.role_passwords_dir is not None
    folder = saga.role_passwords_dir
    return {path.name: secretfiles.read_password(folder, path.name) for path in folder.iterdir()}


async def _as(saga: SagaPlatform, who: str, password: str | None = None) -> asyncpg.Connection[Any]:
    role = pgroles.role_name(saga.config, who)
    return await asyncpg.connect(saga.postgres_dsn, user=role, password=password or _passwords(saga)[role])


def _t(config: SagaConfig, service: str, table: str) -> str:
    return f'"{config.schema(service)}".{table}'


async def test_each_role_reaches_its_own_schema_and_nothing_else(saga: SagaPlatform) -> None:
    config = saga.config
    payment = await _as(saga, "payment")
    try:
        assert await payment.fetchval(f"SELECT count(*) FROM {_t(config, 'payment', 'accounts')}") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema"):
            await payment.fetch(f"SELECT * FROM {_t(config, 'order', 'orders')}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema"):
            await payment.execute(f"DELETE FROM {_t(config, 'inventory', 'stock')}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await payment.execute(f'DROP SCHEMA "{config.schema("inventory")}" CASCADE')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await payment.execute(f'CREATE SCHEMA "{config.prefix}sneaky"')
    finally:
        await payment.close()

    reader = await _as(saga, "reader")
    try:
        for service, table in (("order", "orders"), ("payment", "accounts"), ("tracker", "sagas")):
            await reader.fetch(f"SELECT * FROM {_t(config, service, table)} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table"):
            await reader.execute(f"UPDATE {_t(config, 'payment', 'accounts')} SET balance_minor = 0")
    finally:
        await reader.close()

    dlq = await _as(saga, "dlq")
    try:
        await dlq.fetch(f"SELECT status FROM {_t(config, 'tracker', 'sagas')} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table"):
            await dlq.execute(f"DELETE FROM {_t(config, 'tracker', 'sagas')}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema"):
            await dlq.fetch(f"SELECT * FROM {_t(config, 'payment', 'accounts')}")
    finally:
        await dlq.close()

    assert saga.pool is not None
    rights = await saga.pool.fetch(
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolreplication, rolbypassrls"
        " FROM pg_roles WHERE rolname LIKE $1",
        f"{config.prefix}sagaline_%",
    )
    assert len(rights) == len(pgroles.OWNERS) + 1
    assert all(not any(row[1:]) for row in rights), [dict(r) for r in rights]


async def test_a_wrong_password_is_refused_by_the_server(saga: SagaPlatform) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError, match="password authentication failed"):
        await _as(saga, "payment", password="not-the-password")


async def test_running_it_again_changes_nothing_and_keeps_the_passwords(saga: SagaPlatform) -> None:
    assert saga.pool is not None
    async with saga.pool.acquire() as conn:
        again = await pgroles.ensure_roles(conn, saga.config, _passwords(saga))
    assert [r.created for r in again] == [False] * len(again)
    payment = await _as(saga, "payment")
    await payment.close()


async def test_the_saga_runs_with_every_service_as_its_own_role(saga: SagaPlatform) -> None:
    await saga.start()
    await saga.publish(order("o-least", items=[("mug", 2, 1500)]))
    assert (await saga.wait_status("o-least", "CONFIRMED"))["payment"] == "completed"
    assert saga.pool is not None
    sessions = await saga.pool.fetch(
        "SELECT DISTINCT usename, application_name FROM pg_stat_activity"
        " WHERE application_name LIKE 'sagaline-%' AND usename LIKE $1",
        f"{saga.config.prefix}sagaline_%",
    )
    assert {(r["application_name"], r["usename"]) for r in sessions} >= {
        (f"sagaline-{service}", pgroles.role_name(saga.config, service))
        for service in ("order", "payment", "inventory", "tracker")
    }
    reader = await _as(saga, "reader")  # the invariant check needs no write right
    try:
        report = await invariants.check(reader, saga.config, ["o-least"])
    finally:
        await reader.close()
    assert report.ok, report.violations
