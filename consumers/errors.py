"""Failure classes. Transient failures are retried (in process, then through the group's
delayed retry topics); permanent ones go straight to the dead-letter topic. Business
outcomes are not failures at all: handlers emit them as events."""

from __future__ import annotations

from typing import Literal

import asyncpg
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

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
    # the server ended a session left idle in its transaction (a stalled process): the
    # transaction rolled back, a new connection can apply the batch
    asyncpg.IdleInTransactionSessionTimeoutError,
    asyncpg.CrashShutdownError,
    # raised on a connection the server terminated in the middle of an operation (seen when
    # PostgreSQL restarts; MagicStack/asyncpg#784); the pool replaces that connection
    asyncpg.InternalClientError,
)


# Not "retriable" in Kafka's sense (the same request will not succeed), but the loop that
# raised them recovers by starting over: a consumer fenced out of its group (a long pause,
# a rebalance it missed) rejoins with a new member id and re-reads from the committed
# offsets, which the inbox makes safe; a client that timed out reconnects.
_TRANSIENT_KAFKA = (
    CommitFailedError,
    IllegalStateError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    UnknownMemberIdError,
    IllegalGenerationError,
)


def classify(exc: BaseException) -> FailureClass:
    """Transient or permanent, by type: our markers first, then the PostgreSQL, Kafka and
    OS error trees. Anything unrecognised (a handler bug) is permanent: retrying a bug
    only delays the dead letter an operator needs to see."""
    if isinstance(exc, PermanentError | DecodeError):
        return "permanent"
    if isinstance(exc, (TransientError, *_TRANSIENT_POSTGRES, *_TRANSIENT_KAFKA, TimeoutError, OSError)):
        return "transient"  # OSError covers ConnectionError and socket failures
    if isinstance(exc, KafkaError):
        return "transient" if exc.retriable else "permanent"
    return "permanent"
