"""The adaptive linger against a real broker: a steady stream makes the worker's fetches wait
for records to pile up (few units of work, each of many records), and when the stream stops
the worker goes back to reacting to every record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from producers.connection import KafkaConnection
from producers.publisher import Publisher
from tests.support import wait_until
from tests.worker_support import LedgerService, placed, running

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

LINGER_MS = 200


@pytest.fixture
async def service(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5,))
    await service.setup()
    yield service
    await service.close()


async def test_a_steady_stream_is_applied_in_few_units_and_an_idle_worker_reacts_at_once_again(
    service: LedgerService,
) -> None:
    registry = CollectorRegistry()
    labels = {"group": service.group}

    def lingering() -> float | None:
        return registry.get_sample_value("sagaline_consumer_lingering", labels)

    def units() -> float:
        return registry.get_sample_value("sagaline_consumer_batch_duration_seconds_count", labels) or 0.0

    published = 0
    streaming = asyncio.Event()
    streaming.set()

    async def stream() -> None:  # one record at a time, as fast as acks come back (≫ 20/s)
        nonlocal published
        async with Publisher(service.kafka, source="/tests/order", topics=service.topics) as publisher:
            while streaming.is_set():
                await publisher.publish(placed(f"o-{published}"))
                published += 1
                await asyncio.sleep(0.002)

    async with running(service, registry, fetch_timeout_ms=100, linger_ms=LINGER_MS):
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
        await wait_until(lambda: _rows(service, published), timeout_s=60)
        # the stream stopped: after a second without records the worker reacts at once again
        await wait_until(lambda: _is(lingering(), 0.0), timeout_s=30)
        before = units()
        await service.publish([placed("single")])
        await wait_until(lambda: _rows(service, published + 1), timeout_s=30)
        assert units() == before + 1


async def _is(value: float | None, expected: float) -> bool:
    return value == expected


async def _rows(service: LedgerService, n: int) -> bool:
    return await service.ledger_rows() == n
