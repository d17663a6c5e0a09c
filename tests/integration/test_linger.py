"""The adaptive linger against a real broker: a steady stream makes the worker's fetches wait
for records to pile up (few units of work, each of many records), and when the stream stops
the worker stops lingering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry

from consumers.linger import FILL_SHARE
from producers.publisher import Publisher
from schemas.codec import encode
from schemas.envelope import Envelope
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

    async with running(ledger_service, registry, fetch_timeout_ms=100, linger_ms=LINGER_MS):
        assert lingering() == 0
        # one record at a time, as fast as acks come back (≫ 20/s)
        async with streaming(ledger_service, "o", 0.002) as published:
            await wait_until(lambda: _is(lingering(), 1.0), timeout_s=30)
            before, records_before = units(), published()
            await asyncio.sleep(2.0)
            during, records_during = units() - before, published() - records_before
        # each fetch waits on the broker until a steady stream has filled FILL_SHARE of what
        # 200 ms gather: ~14 units in 2 s, each of many records (reacting to every record,
        # the same stream is one unit per record or close to it)
        assert records_during >= 40, records_during
        assert during <= 2.0 / (FILL_SHARE * LINGER_MS / 1000) + 5, (during, records_during)
        await wait_until(lambda: _rows(ledger_service, published()), timeout_s=60)
        # the stream stopped: after a second without records its fetches stop waiting (the
        # gauge follows the mode), and a lone record is still applied, as a unit of its own
        await wait_until(lambda: _is(lingering(), 0.0), timeout_s=30)
        before = units()
        await ledger_service.publish([placed("single")])
        await wait_until(lambda: _rows(ledger_service, published() + 1), timeout_s=30)
        assert units() == before + 1


async def test_a_lingering_fetch_returns_once_a_share_of_its_wait_is_there_not_after_the_wait(
    ledger_service: LedgerService,
) -> None:
    """Records from another service come in bursts, one per unit of work upstream: with CPU
    to spare, a burst that fills the lingering fetch's share of its wait is applied at once.
    The wait here is a minute and the stream a trickle (a wait would gather about 180
    records; the share is 126 of them), so only the burst, not the wait, can end the fetch;
    and the burst (about 150 KB) is under the most a fetch waits for (256 KiB), so it must be
    the share that ends it."""
    registry = CollectorRegistry()
    labels = {"group": ledger_service.group}
    # the machine reads as idle: with CPU to spare, lingering fetches return at their share
    # (consumers.linger; on a machine busier than SPARE_UNTIL they wait the whole wait)
    idle = lambda _now: 0.0  # noqa: E731
    async with (
        running(ledger_service, registry, fetch_timeout_ms=100, linger_ms=60_000, machine_busy=idle),
        streaming(ledger_service, "t", 0.33),
    ):
        await wait_until(
            lambda: _is(registry.get_sample_value("sagaline_consumer_lingering", labels), 1.0),
            timeout_s=30,
        )
        await asyncio.sleep(1.0)  # the lingering fetch is on the broker, waiting
        # for a share of what a minute of the trickle brings, far under 256 KiB
        share = registry.get_sample_value("sagaline_consumer_fetch_min_bytes", labels)
        assert share is not None
        assert 1 < share < 256 * 1024 / 2
        await burst(ledger_service, 250)
        # at once, give or take a loaded machine; the wait would have been a minute
        await wait_until(lambda: _equals(ledger_service, 250), timeout_s=15)


@asynccontextmanager
async def streaming(
    ledger_service: LedgerService, prefix: str, interval_s: float
) -> AsyncIterator[Callable[[], int]]:
    """Orders published one at a time (each after the last one's ack), `interval_s` apart,
    for as long as the block runs; yields how many so far."""
    published = 0
    going = asyncio.Event()
    going.set()

    async def stream() -> None:
        nonlocal published
        async with Publisher(
            ledger_service.kafka, source="/tests/order", topics=ledger_service.topics
        ) as publisher:
            while going.is_set():
                await publisher.publish(placed(f"{prefix}-{published}"))
                published += 1
                await asyncio.sleep(interval_s)

    producer = asyncio.create_task(stream())
    try:
        yield lambda: published
    finally:
        going.clear()
        await producer


async def burst(ledger_service: LedgerService, n: int) -> None:
    """`n` orders sent together, as a relay sends what one unit of work staged: handed to the
    producer at once, so they reach the broker in one request, then acknowledged."""
    async with Publisher(ledger_service.kafka, source="/tests/order", linger_ms=50) as publisher:
        envelopes = [Envelope.new(placed(f"b-{i}"), "/tests/order") for i in range(n)]
        sent = [await publisher.enqueue(ledger_service.topic, encode(e)) for e in envelopes]
        for future, envelope in zip(sent, envelopes, strict=True):
            await Publisher.acknowledged(future, ledger_service.topic, envelope.id)


async def _equals(ledger_service: LedgerService, n: int) -> bool:
    burst: int = await ledger_service.scalar("SELECT count(*) FROM {s}.ledger WHERE order_id LIKE 'b-%'")
    return burst == n


async def _is(value: float | None, expected: float) -> bool:
    return value == expected


async def _rows(ledger_service: LedgerService, n: int) -> bool:
    return await ledger_service.ledger_rows() == n
