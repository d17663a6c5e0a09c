"""The adaptive linger against a real broker: a steady stream makes the worker's fetches wait
for records to pile up (few units of work, each of many records), and when the stream stops
the worker stops lingering."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from producers.publisher import Publisher
from tests.support import wait_until
from tests.worker_support import LedgerService, placed, running

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

LINGER_MS = 200


async def test_a_steady_stream_is_applied_in_few_units_and_an_idle_worker_stops_lingering(
    ledger_service: LedgerService,
) -> None:
    registry = CollectorRegistry()
    labels = {"group": ledger_service.group}

    def lingering() -> float | None:
        return registry.get_sample_value("sagaline_consumer_lingering", labels)

    def units() -> float:
        return registry.get_sample_value("sagaline_consumer_batch_duration_seconds_count", labels) or 0.0

    published = 0
    streaming = asyncio.Event()
    streaming.set()

    async def stream() -> None:  # one record at a time, as fast as acks come back (≫ 20/s)
        nonlocal published
        async with Publisher(
            ledger_service.kafka, source="/tests/order", topics=ledger_service.topics
        ) as publisher:
            while streaming.is_set():
                await publisher.publish(placed(f"o-{published}"))
                published += 1
                await asyncio.sleep(0.002)

    async with running(ledger_service, registry, fetch_timeout_ms=100, linger_ms=LINGER_MS):
        assert lingering() == 0
        producer = asyncio.create_task(stream())
        try:
            await wait_until(lambda: _is(lingering(), 1.0), timeout_s=30)
            before, records_before = units(), published
            await asyncio.sleep(2.0)
            during, records_during = units() - before, published - records_before
        finally:
            streaming.clear()
            await producer
        # each fetch waits up to 200 ms on the broker: ~10 units in 2 s, each of many records
        # (reacting to every record, the same stream is one unit per record or close to it)
        assert records_during >= 40, records_during
        assert during <= 2.0 / (LINGER_MS / 1000) + 5, (during, records_during)
        await wait_until(lambda: _rows(ledger_service, published), timeout_s=60)
        # the stream stopped: after a second without records its fetches stop waiting (the
        # gauge follows the mode), and a lone record is still applied, as a unit of its own
        await wait_until(lambda: _is(lingering(), 0.0), timeout_s=30)
        before = units()
        await ledger_service.publish([placed("single")])
        await wait_until(lambda: _rows(ledger_service, published + 1), timeout_s=30)
        assert units() == before + 1


async def _is(value: float | None, expected: float) -> bool:
    return value == expected


async def _rows(ledger_service: LedgerService, n: int) -> bool:
    return await ledger_service.ledger_rows() == n
