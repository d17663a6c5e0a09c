"""A real Apache Kafka broker (KRaft, combined broker + controller) from Kafka's own jars.

The jars are resolved from Maven Central once by `mvn dependency:copy-dependencies`
into a cache directory shared by every checkout on the machine; later starts need no
network. One node by default; three nodes (RF=3, min.insync.replicas=2) on request.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sagaline.localstack import process
from sagaline.localstack.tls import BROKER_CN, TlsMaterial

KAFKA_VERSION = "3.9.2"
MTLS_PORT_OFFSET = 1000
_MARKER_CLASS = "kafka.Kafka"


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node of the local cluster and where it keeps its files."""

    node_id: int
    port: int
    controller_port: int
    home: Path

    @property
    def mtls_port(self) -> int:
        """The secure mode's mutual-TLS listener: clients authenticate with a certificate."""
        return self.port + MTLS_PORT_OFFSET

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def marker(self) -> str:
        """Unique text in this node's command line (its config path)."""
        return str(self.config)


def jar_dir(cache_dir: Path) -> Path:
    return cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(cache_dir: Path) -> tuple[Path, bool]:
    """Resolve Kafka's jars into the cache once. Returns (dir, downloaded_now)."""
    libs = jar_dir(cache_dir)
    stamp = libs / ".complete"
    if stamp.exists():
        return libs, False
    process.require_tool("java", "a Java 17 runtime (Debian: apt-get install openjdk-17-jre-headless)")
    mvn = process.require_tool("mvn", "Maven (Debian: apt-get install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    pom = resources.files("sagaline.localstack").joinpath("kafka-pom.xml")
    with resources.as_file(pom) as pom_path:
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
                f"-Dkafka.version={KAFKA_VERSION}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise RuntimeError("Maven could not resolve Kafka's jars: " + " | ".join(tail))
    stamp.write_text(KAFKA_VERSION + "\n")
    return libs, True


def nodes_for(home: Path, brokers: int, base_port: int) -> list[KafkaNode]:
    """Node i listens on base_port + 2i (clients) and base_port + 2i + 1 (controller)."""
    return [
        KafkaNode(
            node_id=i + 1,
            port=base_port + 2 * i,
            controller_port=base_port + 2 * i + 1,
            home=home / f"node{i + 1}",
        )
        for i in range(brokers)
    ]


def bootstrap_servers(nodes: list[KafkaNode]) -> str:
    return ",".join(f"127.0.0.1:{node.port}" for node in nodes)


@dataclass(frozen=True)
class Security:
    """The secure mode of the local cluster: clients authenticate with SCRAM-SHA-512 over TLS
    (the broker's certificate from `tls`) or, on the mutual-TLS listener, with a client
    certificate whose CN is the user name (so both map to the same principal and ACLs); the
    controllers use mutual TLS, and the KRaft `StandardAuthorizer` denies whatever no ACL
    allows. `users`: SCRAM user -> password, bootstrapped into the metadata at format time;
    `super_users` may do anything (the broker itself and the admin principal)."""

    tls: TlsMaterial
    users: dict[str, str] = field(repr=False)
    super_users: tuple[str, ...] = ("admin",)
    broker_user: str = "broker"

    def lines(self, node: KafkaNode) -> dict[str, object]:
        password = self.users[self.broker_user]
        supers = [f"User:{name}" for name in (self.broker_user, *self.super_users, BROKER_CN)]
        mtls = f"MTLS://127.0.0.1:{node.mtls_port}"
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{node.port},{mtls},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.port},{mtls}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required"
                f' username="{self.broker_user}" password="{password}";'
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.tls.broker_keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.tls.ca_cert,
            "listener.name.controller.ssl.client.auth": "required",
            "listener.name.mtls.ssl.client.auth": "required",
            # a certificate's principal is its CN: `CN=payment` is User:payment, as over SCRAM
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": ";".join(supers),
        }

    def scram_arguments(self) -> list[str]:
        return [
            arg
            for name, password in sorted(self.users.items())
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]


def write_config(node: KafkaNode, cluster: list[KafkaNode], security: Security | None = None) -> None:
    replication = min(3, len(cluster))
    min_isr = 2 if len(cluster) >= 3 else 1
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster)
    lines = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node.data_dir,
        "num.partitions": 3,
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        # Topics are created explicitly (`sagaline topics ensure`); a typo must not make one.
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "log.retention.hours": 168,
    }
    if security is not None:
        lines.update(security.lines(node))
    node.home.mkdir(parents=True, exist_ok=True)
    node.home.chmod(0o700)  # the secure mode's config holds the broker's password
    fd = os.open(node.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as config:
        config.write("".join(f"{k}={v}\n" for k, v in lines.items()))
    (node.home / "log4j.properties").write_text(
        "log4j.rootLogger=INFO, file\n"
        "log4j.appender.file=org.apache.log4j.RollingFileAppender\n"
        f"log4j.appender.file.File={node.log_file}\n"
        "log4j.appender.file.MaxFileSize=50MB\n"
        "log4j.appender.file.MaxBackupIndex=2\n"
        "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.request.logger=WARN\n"
        "log4j.logger.state.change.logger=WARN\n"
    )


def new_cluster_id() -> str:
    """A KRaft cluster id: a UUID in URL-safe base64 without padding (it may start with "-",
    so it is always passed as `--cluster-id=ID`)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _java(libs: Path, node: KafkaNode, heap: str, main: str, *args: str) -> list[str]:
    return [
        "java",
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{node.home / 'log4j.properties'}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def format_storage(libs: Path, node: KafkaNode, cluster_id: str, security: Security | None = None) -> None:
    """Format the node's log directory once; in the secure mode with its SCRAM users."""
    if (node.data_dir / "meta.properties").exists():
        return
    result = subprocess.run(
        _java(
            libs,
            node,
            "256m",
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "-c",
            str(node.config),
            *(security.scram_arguments() if security else ()),
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if security:  # never echo a password given on the command line
            for password in security.users.values():
                output = output.replace(password, "***")
        raise RuntimeError(f"kafka storage format failed for node {node.node_id}: {output}")


def start(libs: Path, node: KafkaNode, heap: str) -> int | None:
    """Start the node unless it already runs; returns the new pid or None if it was running."""
    pid = process.read_pid(node.pid_file)
    if pid is not None and process.is_alive(pid, node.marker):
        return None
    argv = _java(libs, node, heap, _MARKER_CLASS, str(node.config))
    return process.spawn(argv, node.home / "logs" / "stdout.log", node.pid_file)


def is_running(node: KafkaNode) -> bool:
    pid = process.read_pid(node.pid_file)
    return pid is not None and process.is_alive(pid, node.marker)


def stop(nodes: list[KafkaNode]) -> list[KafkaNode]:
    """Stop every node together; returns the ones that were running."""
    stopped = set(process.stop_all([(n.pid_file, n.marker) for n in nodes], timeout_s=30.0))
    return [n for n in nodes if n.pid_file in stopped]
