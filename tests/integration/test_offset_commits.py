"""Offsets of applied units of work are committed together, not per unit, and never lost:
an idle poll, a rebalance and a stop each commit everything applied so far."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from producers.connection import KafkaConnection
from tests.support import committed, wait_until
from tests.worker_support import LedgerService, placed, running

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


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
