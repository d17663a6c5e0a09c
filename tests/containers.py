"""The testcontainers branch of the fixtures: used only when a Docker engine answers.

Image names come from the environment so a user's CI pulls the official images while
machines without a registry use locally built ones.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from tests.support import free_port

KAFKA_IMAGE = os.environ.get("SAGALINE_TEST_KAFKA_IMAGE", "apache/kafka:3.9.1")
POSTGRES_IMAGE = os.environ.get("SAGALINE_TEST_POSTGRES_IMAGE", "postgres:16.4")


def docker_available() -> bool:
    """True if a Docker engine answers `/_ping` (DOCKER_HOST or the default unix socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect(host.removeprefix("unix://"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status_line = sock.recv(1024).split(b"\r\n", 1)[0]
                return status_line.startswith(b"HTTP/1.") and b" 200 " in status_line + b" "
        import docker  # shipped with testcontainers

        client = docker.DockerClient(base_url=host, timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no socket, no daemon, no permission: all mean "no Docker here"
        return False


def _bind_loopback(container: Any, container_port: int, host_port: int) -> None:
    """Publish the port on 127.0.0.1 only (docker-py's (host ip, port) form, which
    testcontainers' with_bind_ports does not accept)."""
    container.ports[str(container_port)] = ("127.0.0.1", host_port)


def start_kafka() -> tuple[Any, str]:
    """The official apache/kafka image: single-node KRaft, advertised on a fixed host port."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    port = free_port()
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    _bind_loopback(container, 9092, port)
    container.waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    try:
        container.start()
    except Exception:
        container.stop()
        raise
    return container, f"127.0.0.1:{port}"


def start_postgres() -> tuple[Any, str]:
    from testcontainers.community.postgres import PostgresContainer

    port = free_port()
    container = PostgresContainer(
        POSTGRES_IMAGE, username="sagaline", password="sagaline", dbname="sagaline", driver=None
    )
    _bind_loopback(container, 5432, port)
    container.start()
    return container, f"postgresql://sagaline:sagaline@127.0.0.1:{port}/sagaline"
