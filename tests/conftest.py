"""Session fixtures: a real Kafka broker and a real PostgreSQL, chosen in this order:

1. `SAGALINE_TEST_KAFKA_BOOTSTRAP` / `SAGALINE_TEST_POSTGRES_DSN` when set (already running);
2. testcontainers when a Docker engine answers (`SAGALINE_TEST_KAFKA_IMAGE`,
   `SAGALINE_TEST_POSTGRES_IMAGE` pick the images; `SAGALINE_TEST_BACKEND=local` or
   `=testcontainers` forces a choice);
3. otherwise sagaline's own local stack (Kafka from its jars, PostgreSQL via initdb/pg_ctl),
   in `.sagaline/test-stack` on its own ports, stopped at the end if this session started it.

Tests isolate themselves with unique topic, group and schema names, never with teardown. A
session that starts a local test stack starts it empty (what an earlier session left there
is only debris: thousands of partitions would eventually exhaust the broker's open files).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from producers.connection import KafkaConnection
from sagaline.localstack.stack import LocalStack
from tests import containers
from tests.support import STACK_PORTS

ROOT = Path(__file__).resolve().parent.parent
TEST_STATE = ROOT / ".sagaline"


def _local_stack(name: str) -> LocalStack:
    kafka_port, postgres_port = STACK_PORTS[name]
    return LocalStack(
        state_dir=TEST_STATE / name,
        cache_dir=Path(os.environ.get("SAGALINE_CACHE_DIR", Path.home() / ".cache" / "sagaline")),
        kafka_port=kafka_port,
        postgres_port=postgres_port,
        kafka_heap="768m",
    )


def _wipe(stack: LocalStack) -> None:
    """Stop what is left of a test stack that is not ready and forget its data: the next `up`
    formats Kafka and runs initdb afresh."""
    stack.down()
    shutil.rmtree(stack.state_dir, ignore_errors=True)


class _Backends:
    """Starts what the session needs, once, and stops only what it started."""

    def __init__(self) -> None:
        self.kafka_bootstrap: str | None = os.environ.get("SAGALINE_TEST_KAFKA_BOOTSTRAP")
        self.postgres_dsn: str | None = os.environ.get("SAGALINE_TEST_POSTGRES_DSN")
        self.mode = "environment"
        self._stop: list[object] = []

    def ensure(self) -> None:
        if self.kafka_bootstrap and self.postgres_dsn:
            return
        choice = os.environ.get("SAGALINE_TEST_BACKEND", "auto")
        if choice == "testcontainers" and not containers.docker_available():
            raise RuntimeError("SAGALINE_TEST_BACKEND=testcontainers but no Docker engine answers")
        if choice == "testcontainers" or (choice == "auto" and containers.docker_available()):
            self.mode = "testcontainers"
            if not self.kafka_bootstrap:
                kafka_container, self.kafka_bootstrap = containers.start_kafka()
                self._stop.append(kafka_container)
            if not self.postgres_dsn:
                pg_container, self.postgres_dsn = containers.start_postgres()
                self._stop.append(pg_container)
            return
        self.mode = "local stack"
        stack = _local_stack("test-stack")
        was_ready = asyncio.run(stack.status()).ready
        if not was_ready:
            _wipe(stack)
        result = asyncio.run(stack.up(brokers=1))
        if not was_ready:
            self._stop.append(stack)
        self.kafka_bootstrap = self.kafka_bootstrap or result.kafka_bootstrap
        self.postgres_dsn = self.postgres_dsn or result.postgres_dsn

    def close(self) -> None:
        for thing in reversed(self._stop):
            if isinstance(thing, LocalStack):
                thing.down()
            else:
                thing.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def backends() -> Iterator[_Backends]:
    backends = _Backends()
    try:
        backends.ensure()
        yield backends
    finally:
        backends.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(backends: _Backends) -> str:
    assert backends.kafka_bootstrap
    return backends.kafka_bootstrap


@pytest.fixture(scope="session")
def postgres_dsn(backends: _Backends) -> str:
    assert backends.postgres_dsn
    return backends.postgres_dsn


@pytest.fixture(scope="session")
def kafka(kafka_bootstrap: str) -> KafkaConnection:
    return KafkaConnection(bootstrap_servers=kafka_bootstrap, client_id="sagaline-tests")


@pytest.fixture(scope="session")
def kafka_cluster3() -> Iterator[KafkaConnection]:
    """A three-node KRaft cluster (RF=3, min.insync.replicas=2) for replication tests."""
    bootstrap = os.environ.get("SAGALINE_TEST_KAFKA3_BOOTSTRAP")
    stack = None
    if not bootstrap:
        stack = _local_stack("test-stack-3")
        was_ready = asyncio.run(stack.status()).components[0].ready
        if not was_ready:
            _wipe(stack)
        bootstrap = asyncio.run(stack.up(brokers=3)).kafka_bootstrap
        if was_ready:
            stack = None
    try:
        yield KafkaConnection(bootstrap_servers=bootstrap, client_id="sagaline-tests-3")
    finally:
        if stack is not None:
            stack.down()


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[LocalStack]:
    """The local stack's secure mode (SASL_SSL with SCRAM, ACLs enforced, a SCRAM user per
    service, dlq, upstream and admin), on its own ports; always sagaline's own stack, since
    the mode is what is under test."""
    from sagaline.kafkaacls import PRINCIPALS

    stack = _local_stack("test-stack-secure")
    was_ready = asyncio.run(stack.status()).ready
    if not was_ready:
        _wipe(stack)
    asyncio.run(stack.up(secure=True, users=PRINCIPALS))
    try:
        yield stack
    finally:
        if not was_ready:
            stack.down()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and schema names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def pg_schema(postgres_dsn: str, unique: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for one test (left in place; names never collide)."""
    schema = f"t_{unique}"
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return schema
