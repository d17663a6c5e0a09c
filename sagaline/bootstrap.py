"""The one place that turns Settings into live things: endpoints, pools, clients.

Nothing connects at import time; every function here is called by the CLI (or a test)
with a `Settings` it built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import asyncpg

from dlq.indexer import Indexer, exact_pattern
from producers.acls import AclReport, ensure_acls
from producers.admin import TopicReport, ensure_topics
from producers.connection import KafkaConnection
from producers.errors import Unreachable
from sagaline import kafkaacls, pgroles, secretfiles
from sagaline.localstack.stack import LocalStack
from sagaline.settings import Settings
from sagas.config import SERVICES, SagaConfig
from schemas.topics import TopicMap

log = logging.getLogger(__name__)

POOL_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Endpoints:
    """Where Kafka and PostgreSQL are, after the embedded default is applied. `kafka` is the
    configured identity; under least privilege (`kafka_passwords_dir`) it has none, and each
    caller connects as who it is with `kafka_as`."""

    kafka: KafkaConnection
    postgres_dsn: str
    local: bool
    kafka_passwords_dir: Path | None = None

    def kafka_as(self, who: str) -> KafkaConnection:
        """How `who` — a service, `dlq` (the DLQ tooling), `upstream` (publishers) or `admin`
        (admin steps) — reaches Kafka: as its own SCRAM user under least privilege, with the
        one configured connection otherwise."""
        if self.kafka_passwords_dir is None:
            return self.kafka
        try:
            password = secretfiles.read_password(self.kafka_passwords_dir, who)
        except FileNotFoundError:
            raise ValueError(
                f"no password file for Kafka user {who} in SAGALINE_KAFKA_PASSWORDS_DIR"
            ) from None
        return replace(self.kafka, sasl_username=who, sasl_password=password, client_id=f"sagaline-{who}")

    def environment(self) -> dict[str, str]:
        """The SAGALINE_* variables that point a child process at the same Kafka and
        PostgreSQL. Kafka passwords stay in their files: only the folder is named."""
        kafka = self.kafka
        env = {
            "SAGALINE_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
            "SAGALINE_POSTGRES_DSN": self.postgres_dsn,
        }
        if kafka.security_protocol != "PLAINTEXT":
            env["SAGALINE_KAFKA_SECURITY_PROTOCOL"] = kafka.security_protocol
        if kafka.sasl_mechanism:
            env["SAGALINE_KAFKA_SASL_MECHANISM"] = kafka.sasl_mechanism
        if kafka.ssl_cafile:
            env["SAGALINE_KAFKA_SSL_CAFILE"] = kafka.ssl_cafile
        if self.kafka_passwords_dir:
            env["SAGALINE_KAFKA_PASSWORDS_DIR"] = str(self.kafka_passwords_dir)
        return env


def local_stack(settings: Settings) -> LocalStack:
    return LocalStack(
        state_dir=settings.state_dir,
        cache_dir=settings.cache_dir,
        kafka_port=settings.local_kafka_port,
        postgres_port=settings.local_postgres_port,
        kafka_heap=settings.local_kafka_heap,
    )


async def endpoints(settings: Settings, *, start_local: bool) -> Endpoints:
    """Configured Kafka/PostgreSQL, or the local stack's (started first if asked)."""
    stack = local_stack(settings)
    needs_local = settings.kafka_bootstrap is None or settings.postgres_dsn is None
    if needs_local:
        if start_local:
            await stack.up(brokers=stack.brokers(), users=kafkaacls.PRINCIPALS)
        else:
            status = await stack.status()
            if not status.ready:
                raise Unreachable(
                    "the local stack",
                    str(settings.state_dir),
                    "not running, and Kafka/PostgreSQL are not configured: run `sagaline dev up` "
                    "or set SAGALINE_KAFKA_BOOTSTRAP and SAGALINE_POSTGRES_DSN",
                )
    dsn = _with_password_file(settings, stack)
    if settings.kafka_bootstrap is None and stack.secure():  # the local stack's secure mode
        kafka = replace(stack.kafka_connection(), sasl_username=None, sasl_password=None)
        return Endpoints(kafka, dsn, needs_local, kafka_passwords_dir=stack.kafka_passwords_dir)
    bootstrap = settings.kafka_bootstrap or stack.kafka_bootstrap()
    return Endpoints(settings.kafka(bootstrap), dsn, needs_local, settings.kafka_passwords_dir)


async def postgres_dsn(settings: Settings) -> str:
    """PostgreSQL alone, for the commands that only use the database (`saga`, `outbox`, the
    DLQ's reads): the configured DSN, or the running local stack's. Kafka need be neither
    configured nor up."""
    stack = local_stack(settings)
    if settings.postgres_dsn is None:
        status = await stack.status()
        if not any(c.name == "postgresql" and c.ready for c in status.components):
            raise Unreachable(
                "the local stack",
                str(settings.state_dir),
                "not running, and PostgreSQL is not configured: run `sagaline dev up` "
                "or set SAGALINE_POSTGRES_DSN",
            )
    return _with_password_file(settings, stack)


def _with_password_file(settings: Settings, stack: LocalStack) -> str:
    """The configured DSN (else the local stack's), with the password of
    SAGALINE_POSTGRES_PASSWORD_FILE when that is set."""
    dsn = settings.postgres_dsn.get_secret_value() if settings.postgres_dsn else stack.postgres.dsn
    if settings.postgres_password_file is not None:
        dsn = with_password(
            dsn,
            secretfiles.read_password(
                settings.postgres_password_file.parent, settings.postgres_password_file.name
            ),
        )
    return dsn


async def close_pool(pool: asyncpg.Pool[Any], timeout_s: float = POOL_CLOSE_TIMEOUT_S) -> None:
    """Close gracefully: wait for connections in use to come back. One that does not within
    `timeout_s` (an operation stuck on a connection PostgreSQL dropped) is cut, so shutting
    down never hangs on the database."""
    closing = asyncio.ensure_future(pool.close())
    done, _ = await asyncio.wait({closing}, timeout=timeout_s)
    if done:
        closing.result()
        return
    log.warning("connections still in use after %.0fs: terminating them", timeout_s)
    pool.terminate()
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await closing


async def prepare_kafka(ends: Endpoints, config: SagaConfig) -> tuple[TopicReport, AclReport | None] | None:
    """The admin step before services start, as the `admin` user: every topic of the
    deployment (lanes included) and, under least privilege, every user's ACLs. Skipped (None)
    under least privilege without the admin's password: the admins ran `topics ensure` and
    `acls ensure` themselves."""
    passwords = ends.kafka_passwords_dir
    admin_password = secretfiles.password_file(passwords, kafkaacls.ADMIN) if passwords else None
    if admin_password is not None and not os.access(admin_password, os.R_OK):
        log.info("no Kafka admin password at hand: topics and ACLs are left to the admin steps")
        return None
    admin = ends.kafka_as(kafkaacls.ADMIN)
    topics = await ensure_topics(admin, config.topic_specs())
    acls = None
    if ends.kafka_passwords_dir:
        acls = await ensure_acls(admin, kafkaacls.bindings(config), owned=kafkaacls.owned(config))
    return topics, acls


def role_credentials(settings: Settings, who: str | None) -> dict[str, str]:
    """The user and password `who` (a service, `dlq` or `reader`) connects with under least
    privilege (SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR set); nothing (the DSN's own) otherwise."""
    directory = settings.postgres_role_passwords_dir
    if directory is None or who is None:
        return {}
    role = pgroles.role_name(saga_config(settings), who)
    try:
        return {"user": role, "password": secretfiles.read_password(directory, role)}
    except FileNotFoundError:
        raise ValueError(
            f"no password file for PostgreSQL role {role} in SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR"
            " (run `sagaline db roles`)"
        ) from None


# The services' statements all reach their rows through an index: by key, or through a
# partial index for what is pending or open. asyncpg prepares each statement once per
# connection, and after five runs PostgreSQL may keep a generic plan for it, planned for the
# table as it was then. For a table that was new, that plan is a sequential scan that tests
# every row against every key of the batch (`order_id = ANY($1)`): its cost grows with the
# table times the batch until an autoanalyze happens to invalidate it (docs/benchmarks.md,
# eighteenth step). Without sequential scans the planner keeps to the index at any size; a
# statement with no index to use still scans. That statement's estimate then carries the
# planner's penalty for a disabled scan (10^10), far above `jit_above_cost`: so no JIT
# either, which would compile such a statement on every run (350 ms for a prune that deletes
# nothing) and never pays on statements that touch a batch of rows (nineteenth step).
SERVICE_SERVER_SETTINGS = {"enable_seqscan": "off", "jit": "off"}


def service_server_settings(settings: Settings) -> dict[str, str]:
    """A long-running service's session settings: `SERVICE_SERVER_SETTINGS`, and the server
    ending a session left idle inside a transaction (a frozen process: paused, swapped out,
    stuck in a call that never returns) after SAGALINE_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S,
    so its row and advisory locks go to the process of its group that took its partitions
    over. Its transaction rolls back; the process, if it wakes, finds its connection closed
    (a transient failure: the batch is retried, the inbox drops what the other one applied)."""
    timeout_ms = math.ceil(settings.postgres_idle_in_transaction_timeout_s * 1000)  # 0 only for 0: off
    return {**SERVICE_SERVER_SETTINGS, "idle_in_transaction_session_timeout": str(timeout_ms)}


async def create_pool(
    settings: Settings,
    dsn: str,
    application_name: str = "sagaline",
    *,
    role: str | None = None,
    service: bool = False,
) -> asyncpg.Pool[Any]:
    """A connection pool whose sessions PostgreSQL shows as `application_name` (operators
    find a service's sessions in pg_stat_activity); `Unreachable` (naming host and port,
    never credentials) when PostgreSQL does not answer. `role`: whose least-privilege
    credentials to use, when they are configured (`role_credentials`). `service`: the pool
    of a long-running service (its sessions take `service_server_settings`); the CLI's
    one-off reads and reports plan as PostgreSQL chooses, and an operator's DLQ replay may
    hold its transaction while it paces its sends."""
    credentials = role_credentials(settings, role)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.postgres_pool_min,
            max_size=settings.postgres_pool_max,
            server_settings={
                "application_name": application_name,
                **(service_server_settings(settings) if service else {}),
            },
            reset=_keep_session,
            user=credentials.get("user"),  # None: the DSN's
            password=credentials.get("password"),
        )
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise _unreachable(dsn, exc) from None
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection[Any]:
    """One connection (for a short CLI query); `Unreachable` as for `create_pool`."""
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise _unreachable(dsn, exc) from None
    return conn


def _unreachable(dsn: str, exc: Exception) -> Unreachable:
    """PostgreSQL did not answer, or refused who we are (a wrong password, no pg_hba.conf
    entry — e.g. TCP without TLS where TLS is required): one line naming the server, never
    the password. An untrusted server certificate is an OSError (ssl) and says so."""
    refused = isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError)
    reason = str(exc).splitlines()[0] if refused else getattr(exc, "strerror", None) or str(exc)
    return Unreachable("PostgreSQL", postgres_address(dsn), reason, refused=refused)


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """What a connection needs before going back to the pool: nothing beyond what asyncpg
    always does (roll back an open transaction). Its default reset adds four statements to
    every release (advisory unlock, CLOSE ALL, RESET ALL, UNLISTEN *) — most of the ~35
    statements per saga this removed (docs/benchmarks.md) — for session state sagaline
    never leaves behind:
    its advisory locks are transaction-scoped, it sets no session variables, opens no
    cursors outside a transaction, and the relay UNLISTENs and releases its bucket locks
    before it gives its connection back."""


def without_password(dsn: str) -> str:
    """The DSN with its password masked (for output: the local stack's too is a secret)."""
    url = urlsplit(dsn)
    if url.password is None:
        return dsn
    netloc = url.netloc.replace(f":{url.password}@", ":***@", 1)
    return url._replace(netloc=netloc).geturl()


def with_password(dsn: str, password: str) -> str:
    """The DSN with `password` as its user's password (replacing any it had)."""
    url = urlsplit(dsn)
    credentials, at, host = url.netloc.rpartition("@")
    user = credentials.split(":", 1)[0] if at else ""
    return url._replace(netloc=f"{user}:{quote(password, safe='')}@{host}").geturl()


def postgres_address(dsn: str) -> str:
    """`host:port/database` of a DSN, without user or password."""
    try:
        url = urlsplit(dsn)
        return f"{url.hostname or 'localhost'}:{url.port or 5432}{url.path or ''}"
    except ValueError:
        return "(the configured DSN)"


def saga_config(settings: Settings) -> SagaConfig:
    return SagaConfig(
        topics=TopicMap(
            prefix=settings.topic_prefix,
            partitions=settings.topic_partitions,
            replication=settings.topic_replication,
        ),
        prefix=settings.saga_prefix,
        payment_timeout_s=settings.payment_timeout_s,
        stock_timeout_s=settings.stock_timeout_s,
        retry_delays_s=settings.retry_delays_s,
        stuck_after_s=settings.saga_stuck_after_s,
        tracker_batch_wait_ms=settings.tracker_batch_wait_ms,
    )


def dlq_indexer(settings: Settings, kafka: KafkaConnection, pool: asyncpg.Pool[Any]) -> Indexer:
    """The deployment's DLQ indexer: exactly its groups' dead-letter topics (never another
    deployment's on the same cluster), into its own `dlq` schema, in its own group."""
    config = saga_config(settings)
    return Indexer(
        kafka,
        pool,
        config.schema("dlq"),
        group=kafkaacls.dlq_group(config),
        pattern=exact_pattern(config.lanes(service).dlt for service in SERVICES),
        retention_s=settings.dlq_retention_s,
        prune_interval_s=settings.prune_interval_s,
    )
