"""Offsets of applied units of work are committed together, not per unit, and never lost:
an idle poll, a rebalance and a stop each commit everything applied so far."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry

from consumers import inbox
from consumers.lanes import Lanes
from consumers.metrics import ConsumerMetrics
from consumers.unit_of_work import UnitOfWork
from consumers.worker import Worker, WorkerOptions
from producers import outbox
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from tests.support import committed, wait_until
from tests.worker_support import LedgerService, placed
from tests.workers import ledger

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@asynccontextmanager
async def running(
    service: LedgerService, registry: CollectorRegistry, *, fetch_timeout_ms: int, commit_interval_s: float
) -> AsyncIterator[None]:
    """The ledger worker, built directly so the test sets how long a poll may wait."""
    assert service.pool is not None
    spec = ledger.spec(service.group, service.topic, service.schema, service.prefix, service.delays)
    async with service.pool.acquire() as conn:
        await outbox.install(conn, spec.schema)
        await inbox.install(conn, spec.schema)
        assert spec.migrate is not None
        await spec.migrate(conn)
    lanes = Lanes(spec.group, spec.delays_s, spec.topics.prefix)
    uow = UnitOfWork(
        service.pool,
        schema=spec.schema,
        group=spec.group,
        source=spec.source,
        handlers=spec.build_handlers(service.pool, registry),
        topics=spec.topics,
        lanes=lanes,
    )
    options = WorkerOptions(
        topics=spec.subscribe, fetch_timeout_ms=fetch_timeout_ms, commit_interval_s=commit_interval_s
    )
    stop = asyncio.Event()
    async with Publisher(service.kafka, source=spec.source) as publisher:
        worker = Worker(service.kafka, uow, publisher, lanes, options, ConsumerMetrics(registry))
        await worker.ensure_lanes()
        task = asyncio.create_task(worker.run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=60)


@pytest.fixture
async def service(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5,))
    await service.setup()
    yield service
    await service.close()


async def test_a_long_commit_interval_defers_commits_but_a_rebalance_and_a_stop_commit_everything(
    service: LedgerService, kafka: KafkaConnection
) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    # polls never come back empty within the test: only the rebalance and the stops commit
    async with running(service, first, fetch_timeout_ms=120_000, commit_interval_s=3600):
        await service.publish([placed(f"o-{n}") for n in range(6)])
        await wait_until(lambda: _rows(service, 6))
        await asyncio.sleep(1.0)  # time for a commit, were one to happen per unit of work
        assert await committed(kafka, service.group, service.topic) == 0

        async with running(service, second, fetch_timeout_ms=120_000, commit_interval_s=3600):  # rebalance
            await wait_until(lambda: _committed(kafka, service, 6), timeout_s=60)
            await service.publish([placed(f"p-{n}") for n in range(6)])
            await wait_until(lambda: _rows(service, 12))
    # both stopped: everything applied is committed, and no record was delivered twice
    assert await committed(kafka, service.group, service.topic) == 12
    for registry in (first, second):
        duplicates = registry.get_sample_value(
            "sagaline_consumer_duplicates_skipped_total", {"group": service.group}
        )
        assert (duplicates or 0) == 0
    processed = sum(
        registry.get_sample_value(
            "sagaline_consumer_processed_total",
            {"group": service.group, "topic": service.topic, "outcome": "applied"},
        )
        or 0
        for registry in (first, second)
    )
    assert processed == 12


async def test_an_idle_poll_commits_what_was_applied(service: LedgerService, kafka: KafkaConnection) -> None:
    async with running(service, CollectorRegistry(), fetch_timeout_ms=200, commit_interval_s=3600):
        await service.publish([placed(f"o-{n}") for n in range(4)])
        await wait_until(lambda: _rows(service, 4))
        await wait_until(lambda: _committed(kafka, service, 4), timeout_s=30)


async def _rows(service: LedgerService, n: int) -> bool:
    return await service.ledger_rows() == n


async def _committed(kafka: KafkaConnection, service: LedgerService, n: int) -> bool:
    return await committed(kafka, service.group, service.topic) == n
