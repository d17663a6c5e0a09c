"""Offsets of applied units of work are committed together, not per unit, and never lost:
an idle poll, a rebalance and a stop each commit everything applied so far."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from producers.connection import KafkaConnection
from tests.support import committed, wait_until
from tests.worker_support import LedgerService, placed, running

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_a_long_commit_interval_defers_commits_but_a_rebalance_and_a_stop_commit_everything(
    ledger_service: LedgerService, kafka: KafkaConnection
) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    # polls never come back empty within the test: only the rebalance and the stops commit
    async with running(ledger_service, first, fetch_timeout_ms=120_000, commit_interval_s=3600):
        await ledger_service.publish([placed(f"o-{n}") for n in range(6)])
        await wait_until(lambda: _rows(ledger_service, 6))
        await asyncio.sleep(1.0)  # time for a commit, were one to happen per unit of work
        assert await committed(kafka, ledger_service.group, ledger_service.topic) == 0

        async with running(
            ledger_service, second, fetch_timeout_ms=120_000, commit_interval_s=3600
        ):  # rebalance
            await wait_until(lambda: _committed(kafka, ledger_service, 6), timeout_s=60)
            await ledger_service.publish([placed(f"p-{n}") for n in range(6)])
            await wait_until(lambda: _rows(ledger_service, 12))
    # both stopped: everything applied is committed, and no record was delivered twice
    assert await committed(kafka, ledger_service.group, ledger_service.topic) == 12
    for registry in (first, second):
        duplicates = registry.get_sample_value(
            "sagaline_consumer_duplicates_skipped_total", {"group": ledger_service.group}
        )
        assert (duplicates or 0) == 0
    processed = sum(
        registry.get_sample_value(
            "sagaline_consumer_processed_total",
            {"group": ledger_service.group, "topic": ledger_service.topic, "outcome": "applied"},
        )
        or 0
        for registry in (first, second)
    )
    assert processed == 12


async def test_an_idle_poll_commits_what_was_applied(
    ledger_service: LedgerService, kafka: KafkaConnection
) -> None:
    async with running(ledger_service, CollectorRegistry(), fetch_timeout_ms=200, commit_interval_s=3600):
        await ledger_service.publish([placed(f"o-{n}") for n in range(4)])
        await wait_until(lambda: _rows(ledger_service, 4))
        await wait_until(lambda: _committed(kafka, ledger_service, 4), timeout_s=30)


async def _rows(ledger_service: LedgerService, n: int) -> bool:
    return await ledger_service.ledger_rows() == n


async def _committed(kafka: KafkaConnection, ledger_service: LedgerService, n: int) -> bool:
    return await committed(kafka, ledger_service.group, ledger_service.topic) == n
