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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from producers.connection import KafkaConnection
from sagaline import secretfiles
from sagaline.localstack import kafka, postgres, tls


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

    def _layout(self) -> dict[str, Any]:
        try:
            layout = json.loads(self._layout_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return layout if isinstance(layout, dict) else {}

    def brokers(self) -> int:
        """Broker count of the last `up` (1 if never started)."""
        try:
            return int(self._layout().get("brokers", 1))
        except ValueError:
            return 1

    def secure(self) -> bool:
        """Whether the last `up` started the secure mode (SASL_SSL, ACLs)."""
        return bool(self._layout().get("secure", False))

    def kafka_nodes(self, brokers: int | None = None, secure: bool | None = None) -> list[kafka.KafkaNode]:
        count = brokers or self.brokers()
        mode = "-secure" if (self.secure() if secure is None else secure) else ""
        return kafka.nodes_for(self.state_dir / f"kafka-x{count}{mode}", count, self.kafka_port)

    @property
    def tls_dir(self) -> Path:
        """The secure mode's CA and certificates (`ca.pem` is what clients trust)."""
        return self.state_dir.resolve() / "secure" / "tls"

    @property
    def kafka_passwords_dir(self) -> Path:
        """The secure mode's Kafka users, one password file each."""
        return self.state_dir.resolve() / "secure" / "kafka-passwords"

    def kafka_mtls_connection(self, user: str) -> KafkaConnection:
        """How to reach the secure cluster as `user` with a client certificate (CN=`user`,
        signed by the stack's CA) on the mutual-TLS listener: the alternative to SCRAM."""
        cert, key = tls.ensure(self.tls_dir).client_cert(user)
        return KafkaConnection(
            bootstrap_servers=",".join(f"127.0.0.1:{n.mtls_port}" for n in self.kafka_nodes()),
            security_protocol="SSL",
            ssl_cafile=str(self.tls_dir / "ca.pem"),
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )

    def kafka_connection(self, user: str = "admin") -> KafkaConnection:
        """How to reach the local cluster as `user` (the secure mode's SCRAM user; ignored in
        the plain mode, where everyone is anonymous)."""
        bootstrap = self.kafka_bootstrap()
        if not self.secure():
            return KafkaConnection(bootstrap_servers=bootstrap)
        return KafkaConnection(
            bootstrap_servers=bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=secretfiles.read_password(self.kafka_passwords_dir, user),
            ssl_cafile=str(self.tls_dir / "ca.pem"),
        )

    @property
    def postgres(self) -> postgres.PostgresServer:
        return postgres.PostgresServer(
            home=self.state_dir.resolve() / "postgres",
            port=self.postgres_port,
            tls_ca=self.tls_dir / "ca.pem" if self.secure() else None,
        )

    def kafka_bootstrap(self) -> str:
        return kafka.bootstrap_servers(self.kafka_nodes())

    async def up(
        self,
        brokers: int = 1,
        timeout_s: float = 120.0,
        *,
        secure: bool | None = None,
        users: tuple[str, ...] = (),
    ) -> UpResult:
        """Start what is not running. `secure`: the secure mode (None: as the last `up`);
        `users`: the SCRAM users it bootstraps besides the broker's and `admin` (passwords
        generated into `kafka_passwords_dir`, kept across restarts)."""
        secure = self.secure() if secure is None else secure
        running = [n for n in self.kafka_nodes() if kafka.is_running(n)]
        if running and (self.brokers() != brokers or self.secure() != secure):
            mode = "secure " if self.secure() else ""
            raise RuntimeError(
                f"the local stack already runs with {self.brokers()} {mode}broker(s); "
                "run `sagaline dev down` first"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        libs, downloaded = kafka.ensure_jars(self.cache_dir)
        postgres.bin_dir()  # fail early, with the install hint, before starting anything
        security = self._security(users) if secure else None
        self._layout_file.write_text(json.dumps({"brokers": brokers, "secure": secure}))
        nodes = self.kafka_nodes(brokers)
        started: list[str] = []
        heap = self.kafka_heap if brokers == 1 else "512m"
        cluster_id_file = nodes[0].home.parent / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            cluster_id_file.write_text(kafka.new_cluster_id())
        cluster_id = cluster_id_file.read_text().strip()
        for node in nodes:
            kafka.write_config(node, nodes, security)
            kafka.format_storage(libs, node, cluster_id, security)
            if kafka.start(libs, node, heap) is not None:
                started.append(f"kafka node {node.node_id}")
        server = self.postgres
        postgres.init(server)
        postgres.apply_mode(server, tls.ensure(self.tls_dir).server_cert("postgres") if secure else None)
        if postgres.start(server):
            started.append("postgresql")
        bootstrap = kafka.bootstrap_servers(nodes)
        await asyncio.gather(
            wait_kafka_ready(self.kafka_connection(), nodes, timeout_s),
            ensure_database(server),
        )
        return UpResult(bootstrap, server.dsn, downloaded, started)

    def _security(self, users: tuple[str, ...]) -> kafka.Security:
        names = sorted({"broker", "admin", *users})
        secretfiles.ensure_password_files(self.kafka_passwords_dir, names)
        return kafka.Security(
            tls=tls.ensure(self.tls_dir),
            users={name: secretfiles.read_password(self.kafka_passwords_dir, name) for name in names},
        )

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
                    info = await _describe_cluster(self.kafka_connection(), timeout_ms=5000)
                kafka_ready = len(info["brokers"]) == len(nodes)
                mode = ", SASL_SSL + ACLs" if self.secure() else ""
                detail = f"KRaft, {len(info['brokers'])}/{len(nodes)} broker(s) up{mode}"
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
                ComponentStatus("postgresql", _pg_version(), server.address, pg_running, pg_ready, pg_detail),
            ]
        )


def _pg_version() -> str:
    try:
        return postgres.version()
    except Exception:  # missing binaries show as an empty version in status
        return ""


async def _describe_cluster(connection: KafkaConnection, timeout_ms: int) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(**connection.client_kwargs(), request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        info: dict[str, Any] = await admin.describe_cluster()
        return info
    finally:
        await admin.close()


async def wait_kafka_ready(
    connection: KafkaConnection, nodes: list[kafka.KafkaNode], timeout_s: float
) -> None:
    """Ready means every node answers an admin request as part of the cluster."""
    with _quiet("aiokafka"):  # refused connections are expected while the broker boots
        await _poll_kafka_ready(connection, nodes, timeout_s)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def _poll_kafka_ready(
    connection: KafkaConnection, nodes: list[kafka.KafkaNode], timeout_s: float
) -> None:
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
                one = replace(connection, bootstrap_servers=f"127.0.0.1:{node.port}")
                info = await _describe_cluster(one, timeout_ms=3000)
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
