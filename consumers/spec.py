"""What distinguishes one service's worker from another's: the data the bootstrap needs to
serve it (group, schema, topics, handlers, migrations, retry lanes, background tasks)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import asyncpg
from prometheus_client import CollectorRegistry

from consumers.handlers import Handlers
from consumers.inbox import Inbox
from consumers.lanes import DEFAULT_DELAYS_S
from consumers.unit_of_work import RetryBudget
from producers.db import DbConnection
from schemas.topics import TopicMap

Migrate: TypeAlias = Callable[[DbConnection], Awaitable[None]]
# handlers and background tasks get the process's metrics registry to register their own metrics on
BuildHandlers: TypeAlias = "Callable[[asyncpg.Pool[Any], CollectorRegistry], Handlers]"
BackgroundTask: TypeAlias = (
    "Callable[[asyncpg.Pool[Any], asyncio.Event, CollectorRegistry], Coroutine[Any, Any, None]]"
)


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    group: str
    schema: str
    source: str
    topics: TopicMap
    subscribe: tuple[str, ...]
    build_handlers: BuildHandlers
    migrate: Migrate | None = None
    delays_s: tuple[float, ...] = DEFAULT_DELAYS_S
    budget: RetryBudget = field(default_factory=RetryBudget)
    run_relay: bool = True
    transaction_per_message: bool = False
    """True for services whose messages contend for hot rows (see UnitOfWork)."""
    batch_wait_ms: int = 0
    """For a service off the saga's critical path (the tracker's projection): how long every
    fetch waits for records to pile up (up to 256 KiB), so it applies few large units of work
    instead of one per record, whatever the load. 0: the adaptive linger of the settings
    (SAGALINE_WORKER_LINGER_MS) instead."""
    inbox: Inbox | None = None
    """Where the group claims the events it applies: None for the schema's inbox table
    (created, and pruned after SAGALINE_INBOX_RETENTION_S, by the bootstrap); a service whose
    own state keeps one row per event id claims there instead (the tracker's timeline)."""
    background: tuple[BackgroundTask, ...] = ()
    """Extra loops run beside the worker until stop (e.g. the order service's deadlines)."""
