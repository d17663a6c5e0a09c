"""Failure classes. Transient failures are retried (in process, then through the group's
delayed retry topics); permanent ones go straight to the dead-letter topic. Business
outcomes are not failures at all: handlers emit them as events."""

from __future__ import annotations

from typing import Literal

import asyncpg
from aiokafka.errors import KafkaError

from schemas.errors import DecodeError

FailureClass = Literal["transient", "permanent"]


class TransientError(Exception):
    """Raise from a handler when retrying later may succeed (a dependency is down)."""


class PermanentError(Exception):
    """Raise from a handler when retrying can never succeed (the message is unusable)."""


_TRANSIENT_POSTGRES = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # raised on a connection the server terminated in the middle of an operation (seen when
    # PostgreSQL restarts; MagicStack/asyncpg#784); the pool replaces that connection
    asyncpg.InternalClientError,
)


def classify(exc: BaseException) -> FailureClass:
    """Transient or permanent, by type: our markers first, then the PostgreSQL, Kafka and
    OS error trees. Anything unrecognised (a handler bug) is permanent: retrying a bug
    only delays the dead letter an operator needs to see."""
    if isinstance(exc, PermanentError | DecodeError):
        return "permanent"
    if isinstance(exc, (TransientError, *_TRANSIENT_POSTGRES, TimeoutError, OSError)):
        return "transient"  # OSError covers ConnectionError and socket failures
    if isinstance(exc, KafkaError):
        return "transient" if exc.retriable else "permanent"
    return "permanent"
