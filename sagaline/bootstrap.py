"""The one place that turns Settings into live things: endpoints, pools, clients.

Nothing connects at import time; every function here is called by the CLI (or a test)
with a `Settings` it built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from dlq.indexer import Indexer, exact_pattern
from producers.connection import KafkaConnection
from producers.errors import Unreachable
from sagaline import pgroles
from sagaline.localstack.stack import LocalStack
from sagaline.settings import Settings
from sagas.config import SERVICES, SagaConfig
from schemas.topics import TopicMap

log = logging.getLogger(__name__)

POOL_CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Endpoints:
    """Where Kafka and PostgreSQL are, after the embedded default is applied."""

    kafka: KafkaConnection
    postgres_dsn: str
    local: bool


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
            await stack.up(brokers=stack.brokers())
        else:
            status = await stack.status()
            if not status.ready:
                raise Unreachable(
                    "the local stack",
                    str(settings.state_dir),
                    "not running, and Kafka/PostgreSQL are not configured: run `sagaline dev up` "
                    "or set SAGALINE_KAFKA_BOOTSTRAP and SAGALINE_POSTGRES_DSN",
                )
    bootstrap = settings.kafka_bootstrap or stack.kafka_bootstrap()
    dsn = settings.postgres_dsn.get_secret_value() if settings.postgres_dsn else stack.postgres.dsn
    return Endpoints(kafka=settings.kafka(bootstrap), postgres_dsn=dsn, local=needs_local)


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


def role_credentials(settings: Settings, who: str | None) -> dict[str, str]:
    """The user and password `who` (a service, `dlq` or `reader`) connects with under least
    privilege (SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR set); nothing (the DSN's own) otherwise."""
    directory = settings.postgres_role_passwords_dir
    if directory is None or who is None:
        return {}
    role = pgroles.role_name(saga_config(settings), who)
    try:
        return {"user": role, "password": pgroles.read_password(directory, role)}
    except FileNotFoundError:
        raise ValueError(
            f"no password file for PostgreSQL role {role} in SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR"
            " (run `sagaline db roles`)"
        ) from None


async def create_pool(
    settings: Settings, dsn: str, application_name: str = "sagaline", *, role: str | None = None
) -> asyncpg.Pool[Any]:
    """A connection pool whose sessions PostgreSQL shows as `application_name` (operators
    find a service's sessions in pg_stat_activity); `Unreachable` (naming host and port,
    never credentials) when PostgreSQL does not answer. `role`: whose least-privilege
    credentials to use, when they are configured (`role_credentials`)."""
    credentials = role_credentials(settings, role)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.postgres_pool_min,
            max_size=settings.postgres_pool_max,
            server_settings={"application_name": application_name},
            reset=_keep_session,
            user=credentials.get("user"),  # None: the DSN's
            password=credentials.get("password"),
        )
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        raise Unreachable(
            "PostgreSQL", postgres_address(dsn), getattr(exc, "strerror", None) or str(exc)
        ) from None
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection[Any]:
    """One connection (for a short CLI query); `Unreachable` as for `create_pool`."""
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        raise Unreachable(
            "PostgreSQL", postgres_address(dsn), getattr(exc, "strerror", None) or str(exc)
        ) from None
    return conn


async def _keep_session(conn: asyncpg.Connection[Any]) -> None:
    """What a connection needs before going back to the pool: nothing beyond what asyncpg
    always does (roll back an open transaction). Its default reset adds four statements to
    every release (advisory unlock, CLOSE ALL, RESET ALL, UNLISTEN *) — most of the ~35
    statements per saga this removed (docs/benchmarks.md) — for session state sagaline
    never leaves behind:
    its advisory locks are transaction-scoped, it sets no session variables, opens no
    cursors outside a transaction, and the relay UNLISTENs before it releases its listener."""


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
        group=f"{config.prefix}sagaline-dlq-index",
        pattern=exact_pattern(config.lanes(service).dlt for service in SERVICES),
        retention_s=settings.dlq_retention_s,
        prune_interval_s=settings.prune_interval_s,
    )
