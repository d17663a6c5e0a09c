"""The local development stack: real Kafka (KRaft) + real PostgreSQL, no Docker.

`up` is idempotent, `down` stops only what `up` started (pid files / the data dir),
`status` reports versions and readiness from real requests, never from a sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from sagaline.localstack import kafka, postgres


@dataclass
class ComponentStatus:
    name: str
    version: str
    address: str
    running: bool
    ready: bool
    detail: str = ""


@dataclass
class StackStatus:
    components: list[ComponentStatus] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return bool(self.components) and all(c.ready for c in self.components)

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "components": [asdict(c) for c in self.components]}


@dataclass
class UpResult:
    kafka_bootstrap: str
    postgres_dsn: str
    downloaded_jars: bool
    started: list[str]


@dataclass(frozen=True)
class LocalStack:
    """Where the stack lives and how it is shaped. Built by the bootstrap from Settings."""

    state_dir: Path
    cache_dir: Path
    kafka_port: int = 19092
    postgres_port: int = 15432
    kafka_heap: str = "1g"

    @property
    def _layout_file(self) -> Path:
        return self.state_dir / "stack.json"

    def brokers(self) -> int:
        """Broker count of the last `up` (1 if never started)."""
        try:
            return int(json.loads(self._layout_file.read_text())["brokers"])
        except (FileNotFoundError, KeyError, ValueError):
            return 1

    def kafka_nodes(self, brokers: int | None = None) -> list[kafka.KafkaNode]:
        count = brokers or self.brokers()
        return kafka.nodes_for(self.state_dir / f"kafka-x{count}", count, self.kafka_port)

    @property
    def postgres(self) -> postgres.PostgresServer:
        return postgres.PostgresServer(home=self.state_dir.resolve() / "postgres", port=self.postgres_port)

    def kafka_bootstrap(self) -> str:
        return kafka.bootstrap_servers(self.kafka_nodes())

    async def up(self, brokers: int = 1, timeout_s: float = 120.0) -> UpResult:
        running = [n for n in self.kafka_nodes() if kafka.is_running(n)]
        if running and self.brokers() != brokers:
            raise RuntimeError(
                f"the local stack already runs with {self.brokers()} broker(s); run `sagaline dev down` first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        libs, downloaded = kafka.ensure_jars(self.cache_dir)
        postgres.bin_dir()  # fail early, with the install hint, before starting anything
        self._layout_file.write_text(json.dumps({"brokers": brokers}))
        nodes = self.kafka_nodes(brokers)
        started: list[str] = []
        heap = self.kafka_heap if brokers == 1 else "512m"
        cluster_id_file = nodes[0].home.parent / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            cluster_id_file.write_text(kafka.new_cluster_id())
        cluster_id = cluster_id_file.read_text().strip()
        for node in nodes:
            kafka.write_config(node, nodes)
            kafka.format_storage(libs, node, cluster_id)
            if kafka.start(libs, node, heap) is not None:
                started.append(f"kafka node {node.node_id}")
        server = self.postgres
        postgres.init(server)
        if postgres.start(server):
            started.append("postgresql")
        bootstrap = kafka.bootstrap_servers(nodes)
        await asyncio.gather(
            wait_kafka_ready(bootstrap, nodes, timeout_s),
            ensure_database(server),
        )
        return UpResult(bootstrap, server.dsn, downloaded, started)

    def down(self) -> list[str]:
        stopped = [f"kafka node {n.node_id}" for n in kafka.stop(self.kafka_nodes())]
        if (self.postgres.data_dir / "PG_VERSION").exists() and postgres.stop(self.postgres):
            stopped.append("postgresql")
        return stopped

    async def status(self) -> StackStatus:
        nodes = self.kafka_nodes()
        bootstrap = kafka.bootstrap_servers(nodes)
        running = [n for n in nodes if kafka.is_running(n)]
        kafka_ready, detail = False, "not running"
        if running:
            try:
                with _quiet("aiokafka"):
                    info = await _describe_cluster(bootstrap, timeout_ms=5000)
                kafka_ready = len(info["brokers"]) == len(nodes)
                detail = f"KRaft, {len(info['brokers'])}/{len(nodes)} broker(s) up"
            except Exception as exc:  # a status probe reports every failure, it never raises
                detail = f"not answering: {type(exc).__name__}"
        server = self.postgres
        pg_running = (server.data_dir / "PG_VERSION").exists() and postgres.is_running(server)
        pg_ready, pg_detail = False, "not running"
        if pg_running:
            try:
                conn = await asyncpg.connect(server.dsn, timeout=5)
                try:
                    pg_detail = str(await conn.fetchval("SHOW server_version"))
                finally:
                    await conn.close()
                pg_ready = True
            except Exception as exc:  # see above
                pg_detail = f"not answering: {type(exc).__name__}"
        return StackStatus(
            [
                ComponentStatus("kafka", kafka.KAFKA_VERSION, bootstrap, bool(running), kafka_ready, detail),
                ComponentStatus("postgresql", _pg_version(), server.dsn, pg_running, pg_ready, pg_detail),
            ]
        )


def _pg_version() -> str:
    try:
        return postgres.version()
    except Exception:  # missing binaries show as an empty version in status
        return ""


async def _describe_cluster(bootstrap: str, timeout_ms: int) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        info: dict[str, Any] = await admin.describe_cluster()
        return info
    finally:
        await admin.close()


async def wait_kafka_ready(bootstrap: str, nodes: list[kafka.KafkaNode], timeout_s: float) -> None:
    """Ready means every node answers an admin request as part of the cluster."""
    with _quiet("aiokafka"):  # refused connections are expected while the broker boots
        await _poll_kafka_ready(bootstrap, nodes, timeout_s)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _poll_kafka_ready(bootstrap: str, nodes: list[kafka.KafkaNode], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        dead = [n for n in nodes if not kafka.is_running(n)]
        if dead:
            tail = _tail(dead[0].log_file) or _tail(dead[0].home / "logs" / "stdout.log")
            raise RuntimeError(f"kafka node {dead[0].node_id} exited during start-up: {tail}")
        try:
            # Each node is asked on its own: every broker's metadata must list every broker as
            # alive, or a new topic's replicas would look short to clients of the late one.
            for node in nodes:
                info = await _describe_cluster(f"127.0.0.1:{node.port}", timeout_ms=3000)
                if len(info["brokers"]) != len(nodes):
                    last_error = f"node {node.node_id} sees {len(info['brokers'])}/{len(nodes)} brokers"
                    break
            else:
                return
        except Exception as exc:  # not up yet: keep polling until the deadline
            last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.5)
    raise TimeoutError(f"kafka not ready after {timeout_s:.0f}s ({last_error})")


async def ensure_database(server: postgres.PostgresServer) -> None:
    conn = await asyncpg.connect(server.admin_dsn, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", postgres.DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{postgres.DATABASE}"')
    finally:
        await conn.close()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
