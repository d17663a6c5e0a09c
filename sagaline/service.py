"""Serving one consumer group as a process: the bootstrap of a worker.

Wires settings -> pool -> publisher -> unit of work -> worker (and, optionally, the
service's outbox relay), serves /metrics, /healthz and /readyz, and shuts down on SIGTERM:
stop fetching, finish the batch in hand, commit, flush, close — within the deadline.
Each loop (consumer, relay, background) is supervised: an outage of PostgreSQL or Kafka
restarts the loop with backoff rather than ending the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypedDict

from prometheus_client import CollectorRegistry

from consumers import inbox
from consumers.lanes import Lanes
from consumers.metrics import ConsumerMetrics
from consumers.spec import WorkerSpec
from consumers.unit_of_work import UnitOfWork
from consumers.worker import Worker, WorkerOptions
from producers import outbox
from producers.metrics import RelayMetrics
from producers.publisher import PASS_SENDER, Publisher
from producers.relay import OutboxRelay
from sagaline.bootstrap import close_pool, create_pool, endpoints
from sagaline.ops import OpsServer, process_registry
from sagaline.runtime import supervised, until_stopped
from sagaline.settings import Settings

log = logging.getLogger(__name__)


BATCH_BYTES = 256 * 1024  # what a waiting or lingering fetch collects at most


class _FetchWait(TypedDict, total=False):
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    linger_ms: int
    linger_bytes: int


def _fetch_wait(settings: Settings, spec: WorkerSpec) -> _FetchWait:
    """How a service's fetches wait: a fixed batch wait (the tracker), or the adaptive linger."""
    if spec.batch_wait_ms:
        return {"fetch_min_bytes": BATCH_BYTES, "fetch_max_wait_ms": spec.batch_wait_ms}
    return {"linger_ms": settings.worker_linger_ms, "linger_bytes": BATCH_BYTES}


async def serve(
    settings: Settings,
    spec: WorkerSpec,
    stop: asyncio.Event,
    metrics_port: int | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Run one service until `stop`. `registry`: where its metrics go (default: a new process
    registry); a caller that runs several services in one process passes one per service."""
    ends = await endpoints(settings, start_local=False)
    pool = await create_pool(
        settings, ends.postgres_dsn, application_name=f"sagaline-{spec.name}", role=spec.name, service=True
    )
    registry = registry or process_registry(spec.name)
    try:
        async with pool.acquire() as conn:
            await outbox.install(conn, spec.schema)
            if spec.inbox is None:
                await inbox.install(conn, spec.schema)
            if spec.migrate:
                await spec.migrate(conn)
        lanes = Lanes(spec.group, spec.delays_s, spec.topics.prefix)
        kafka = ends.kafka_as(spec.name)  # under least privilege, the service's own Kafka user
        publisher = Publisher(kafka, source=spec.source, **PASS_SENDER)
        relay = None
        if spec.run_relay:
            relay = OutboxRelay(pool, publisher, spec.schema, metrics=RelayMetrics(registry))
        uow = UnitOfWork(
            pool,
            schema=spec.schema,
            group=spec.group,
            source=spec.source,
            handlers=spec.build_handlers(pool, registry),
            topics=spec.topics,
            budget=spec.budget,
            transaction_per_message=spec.transaction_per_message,
            lanes=lanes,
            dispatch=relay if settings.outbox_dispatch else None,
            inbox=spec.inbox,
        )
        async with publisher:
            worker = Worker(
                kafka,
                uow,
                publisher,
                lanes,
                WorkerOptions(
                    topics=spec.subscribe,
                    max_records=settings.worker_max_records,
                    commit_interval_s=settings.worker_commit_interval_s,
                    **_fetch_wait(settings, spec),
                    sensitive_fields=settings.redact_fields,
                    stall_after_s=settings.worker_stall_after_s,
                ),
                ConsumerMetrics(registry),
            )
            await worker.ensure_lanes()
            ops = OpsServer(
                registry,
                settings.metrics_host,
                settings.metrics_port if metrics_port is None else metrics_port,
                ready=lambda: worker.ready and not stop.is_set(),
            )
            port = await ops.start()
            log.info(
                "%s: group %s on %s; ops on %s:%d",
                spec.name,
                spec.group,
                ", ".join(spec.subscribe),
                settings.metrics_host,
                port,
            )
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                f"{spec.name}-worker": lambda: worker.run(stop)
            }
            if relay is not None:
                loops[f"{spec.name}-relay"] = partial(relay.run, stop)
            if spec.inbox is None:
                loops[f"{spec.name}-inbox-prune"] = partial(
                    inbox.prune_loop,
                    pool,
                    spec.schema,
                    settings.inbox_retention_s,
                    settings.prune_interval_s,
                    stop,
                )
            for number, background in enumerate(spec.background):
                loops[f"{spec.name}-background-{number}"] = partial(background, pool, stop, registry)
            tasks = [
                asyncio.create_task(supervised(name, loop, stop), name=name) for name, loop in loops.items()
            ]
            try:
                await until_stopped(tasks, stop, settings.shutdown_deadline_s)
            finally:
                await ops.stop()
    finally:
        await close_pool(pool)
    log.info("%s: stopped cleanly", spec.name)
