"""The secure local stack (`sagaline dev up --secure`): Kafka with SASL_SSL + SCRAM and the
KRaft StandardAuthorizer allowing nothing by default, PostgreSQL over verified TLS only.
Each denial is the broker's own error, the ACLs are applied idempotently with drift
reported, a bad credential or an untrusted certificate fails in one line without the
secret, and the saga runs with every service, the DLQ indexer and the publisher as their
own Kafka users."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from producers.acls import AclBinding, Operation, ResourceType, ensure_acls
from producers.admin import ensure_topics, start_admin
from producers.connection import KafkaConnection
from producers.errors import Unreachable
from sagaline import kafkaacls
from sagaline.localstack.stack import LocalStack
from sagas.config import SagaConfig
from schemas.topics import TopicMap
from tests.support import SECURE_METRICS_PORTS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def _deployment(stack: LocalStack, unique: str) -> SagaConfig:
    """A deployment of its own on the shared secure cluster: topics and ACLs made by admin."""
    config = SagaConfig(
        topics=TopicMap(prefix=f"acl{unique}.", partitions=2, replication=1), prefix=f"a{unique}_"
    )
    admin = stack.kafka_connection("admin")
    await ensure_topics(admin, config.topic_specs())
    await ensure_acls(admin, kafkaacls.bindings(config), owned=kafkaacls.owned(config))
    return config


async def _produce(kafka: KafkaConnection, topic: str) -> int:
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        return (await producer.send_and_wait(topic, b"{}", key=b"k")).offset
    finally:
        await producer.stop()


async def _consume(kafka: KafkaConnection, topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=2000)
    finally:
        await consumer.stop()


async def test_each_user_may_do_what_its_service_does_and_nothing_else(
    secure_stack: LocalStack, unique: str
) -> None:
    config = await _deployment(secure_stack, unique)
    topics = config.topics
    payment = secure_stack.kafka_connection("payment")
    upstream = secure_stack.kafka_connection("upstream")

    assert await _produce(payment, topics.payments) >= 0  # its own events topic
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(payment, topics.orders)
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume(payment, topics.ingress, config.group("payment"))
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(payment, topics.orders, config.group("order"))  # a topic it may read, another's group
    await _consume(payment, topics.orders, config.group("payment"))  # its subscription, its group

    assert await _produce(upstream, topics.ingress) >= 0
    for topic in (topics.orders, topics.payments, topics.inventory, config.lanes("order").retry_topic(1)):
        with pytest.raises(TopicAuthorizationFailedError):
            await _produce(upstream, topic)
    with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
        await _consume(upstream, topics.ingress, config.group("order"))  # neither the group nor the topic

    # no service may create topics: that is the admin step's
    admin = await start_admin(payment)
    try:
        response = await admin.create_topics([_new_topic(f"{topics.prefix}payment-made")])
        [result] = response.to_object()["topic_errors"]
        assert result["error_code"] == TopicAuthorizationFailedError.errno
    finally:
        await admin.close()


def _new_topic(name: str) -> object:
    from aiokafka.admin import NewTopic

    return NewTopic(name, num_partitions=1, replication_factor=1)


async def test_acls_ensure_is_idempotent_and_reports_drift(secure_stack: LocalStack, unique: str) -> None:
    config = SagaConfig(
        topics=TopicMap(prefix=f"acl{unique}.", partitions=2, replication=1), prefix=f"a{unique}_"
    )
    admin = secure_stack.kafka_connection("admin")
    wanted = kafkaacls.bindings(config)
    first = await ensure_acls(admin, wanted, owned=kafkaacls.owned(config))
    assert sorted(first.created) == sorted(wanted)
    assert first.unchanged == []
    assert first.ok
    second = await ensure_acls(admin, wanted, owned=kafkaacls.owned(config))
    assert second.created == []
    assert sorted(second.unchanged) == sorted(wanted)
    assert second.ok

    grant = AclBinding("User:payment", ResourceType.TOPIC, config.topics.ingress, Operation.READ)
    await ensure_acls(admin, [grant])  # granted by hand, outside the generated set
    drifted = await ensure_acls(admin, wanted, owned=kafkaacls.owned(config))
    assert drifted.unexpected == [grant]
    assert not drifted.ok

    other = SagaConfig(topics=TopicMap(prefix=f"other{unique}."), prefix=f"o{unique}_")
    assert (await ensure_acls(admin, kafkaacls.bindings(other), owned=kafkaacls.owned(other))).ok, (
        "another deployment's ACLs on the same users are not its drift"
    )


def _self_signed(folder: Path, cn: str) -> tuple[Path, Path]:
    """(certificate, key) signed by nobody the stack trusts: a foreign CA, or a forged client."""
    cert, key = folder / f"{cn.replace(' ', '_')}.pem", folder / f"{cn.replace(' ', '_')}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-noenc", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _secure_env(stack: LocalStack, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SAGALINE_")},
        "SAGALINE_STATE_DIR": str(stack.state_dir),
        "SAGALINE_LOCAL_KAFKA_PORT": str(stack.kafka_port),
        "SAGALINE_LOCAL_POSTGRES_PORT": str(stack.postgres_port),
        **extra,
    }


@pytest.mark.parametrize("problem", ["wrong password", "untrusted certificate"])
def test_a_refused_connection_says_why_in_one_line_without_the_secret(
    secure_stack: LocalStack, tmp_path: Path, problem: str
) -> None:
    password = (secure_stack.kafka_passwords_dir / "admin").read_text().strip()
    ca = secure_stack.tls_dir / "ca.pem"
    if problem == "wrong password":
        password = "Wrong-" + password[:12]
    else:
        ca, _ = _self_signed(tmp_path, "not the stack's CA")
    env = _secure_env(
        secure_stack,
        SAGALINE_KAFKA_BOOTSTRAP=secure_stack.kafka_bootstrap(),
        SAGALINE_POSTGRES_DSN=secure_stack.postgres.dsn,
        SAGALINE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        SAGALINE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        SAGALINE_KAFKA_SASL_USERNAME="admin",
        SAGALINE_KAFKA_SASL_PASSWORD=password,
        SAGALINE_KAFKA_SSL_CAFILE=str(ca),
    )
    result = subprocess.run(
        [sys.executable, "-m", "sagaline", "topics", "ensure", "--prefix", "refused."],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected = (
        "authentication failed for user 'admin'"
        if problem == "wrong password"
        else "certificate is not trusted"
    )
    assert f"Kafka at {secure_stack.kafka_bootstrap()} refused the connection" in lines[0]
    assert expected in lines[0]
    assert password not in result.stdout + result.stderr


def test_the_saga_runs_with_every_process_as_its_own_user(secure_stack: LocalStack, unique: str) -> None:
    """`sagaline demo` on the secure stack: the admin step makes the topics and ACLs, the four
    services and the DLQ indexer connect as their own users, the orders go in as upstream."""
    env = _secure_env(
        secure_stack,
        SAGALINE_SAGA_PREFIX=f"s{unique}_",
        SAGALINE_TOPIC_PREFIX=f"sec{unique}.",
        SAGALINE_TOPIC_REPLICATION="1",
        SAGALINE_METRICS_PORT=str(SECURE_METRICS_PORTS.start),
    )
    result = subprocess.run(
        [sys.executable, "-m", "sagaline", "demo", "--orders", "200", "--json"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["open_sagas"] == 0
    assert report["invariants"]["violations"] == []
    assert sum(report["outcomes"].values()) == 200


async def test_postgresql_takes_tcp_connections_over_verified_tls_only(
    secure_stack: LocalStack, tmp_path: Path
) -> None:
    server = secure_stack.postgres
    conn = await asyncpg.connect(server.dsn)  # sslmode=verify-full against the stack's CA
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
    plain = server.dsn.split("?")[0] + "?sslmode=disable"
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(plain)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(server.dsn, password="not-the-password")


async def test_a_client_certificate_is_the_alternative_to_scram(
    secure_stack: LocalStack, unique: str, tmp_path: Path
) -> None:
    """The mutual-TLS listener maps a certificate's CN to the user of that name: the same
    principal, the same ACLs, no password."""
    config = await _deployment(secure_stack, unique)
    payment = secure_stack.kafka_mtls_connection("payment")
    assert await _produce(payment, config.topics.payments) >= 0
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(payment, config.topics.orders)

    cert, key = await asyncio.to_thread(_self_signed, tmp_path, "admin")
    forged = dataclasses.replace(payment, ssl_certfile=str(cert), ssl_keyfile=str(key))
    with pytest.raises(Unreachable, match=r"refused the connection: .* client certificate"):
        await start_admin(forged)  # a certificate the stack's CA did not sign, even as CN=admin


@pytest.mark.parametrize("problem", ["wrong password", "untrusted certificate"])
def test_postgresql_refusing_says_why_in_one_line_without_the_secret(
    secure_stack: LocalStack, tmp_path: Path, problem: str
) -> None:
    dsn = secure_stack.postgres.dsn
    secret = "Wrong-password-0123"
    if problem == "wrong password":
        dsn = dsn.replace(":sagaline@", f":{secret}@")
    else:
        other, _ = _self_signed(tmp_path, "not the stack's CA")
        dsn = dsn.replace(str(secure_stack.tls_dir / "ca.pem"), str(other))
        secret = "sagaline@"  # the DSN's password, as it would appear in a DSN
    env = _secure_env(
        secure_stack,
        SAGALINE_KAFKA_BOOTSTRAP=secure_stack.kafka_bootstrap(),
        SAGALINE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        SAGALINE_KAFKA_SSL_CAFILE=str(secure_stack.tls_dir / "ca.pem"),
        SAGALINE_KAFKA_PASSWORDS_DIR=str(secure_stack.kafka_passwords_dir),
        SAGALINE_POSTGRES_DSN=dsn,
    )
    result = subprocess.run(
        [sys.executable, "-m", "sagaline", "saga", "list"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    address = f"PostgreSQL at 127.0.0.1:{secure_stack.postgres_port}/sagaline"
    if problem == "wrong password":
        assert f"{address} refused the connection: password authentication failed" in lines[0]
    else:
        assert f"{address} is unreachable" in lines[0]
        assert "certificate verify failed" in lines[0]
    assert secret not in result.stdout + result.stderr
