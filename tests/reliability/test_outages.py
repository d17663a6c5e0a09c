"""The saga through a PostgreSQL outage: the database stops mid-load and comes back.

The services run on a PostgreSQL of this test's own (started with the local stack's code
on a free port), so stopping it touches no other test; Kafka is the shared test broker."""

from __future__ import annotations

import asyncio

import pytest

from producers.connection import KafkaConnection
from sagaline.localstack import postgres
from tests.saga_support import SagaPlatform, order
from tests.support import read_all, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_a_postgresql_outage_mid_load_delays_sagas_but_ends_every_one(
    kafka: KafkaConnection, own_postgres: postgres.PostgresServer, unique: str
) -> None:
    """Setup: the four services, 160 orders (some declined, some out of stock). Fault:
    PostgreSQL stops (fast shutdown, every connection cut) while half of them are in flight,
    stays down 4 s while the other half is published, then starts again. Validate: no
    service process ends, every saga reaches a terminal state, the invariants hold (nothing
    charged twice, money and stock balanced), and nothing was dead-lettered."""
    # retry lanes spanning longer than the outage, as in production (1 s / 10 s / 60 s)
    saga = SagaPlatform(kafka, own_postgres.dsn, unique, retry_delays_s=(1.0, 2.0, 4.0, 8.0))
    await saga.setup([("alice", 10_000_000), ("broke", 0)], [("mug", 1_000), ("rare", 10)])
    orders = [
        order(f"o-{i}", "broke" if i % 10 == 0 else "alice", [("rare" if i % 4 == 0 else "mug", 1, 100)])
        for i in range(160)
    ]
    try:
        await saga.start()
        await saga.publish(*orders[:80])

        async def some_confirmed() -> bool:
            return bool(await saga.scalar("SELECT count(*) FROM {order}.orders WHERE status = 'CONFIRMED'"))

        await wait_until(some_confirmed, timeout_s=60)
        await asyncio.to_thread(postgres.stop, own_postgres)
        await saga.publish(*orders[80:])  # Kafka still takes the upstream's requests
        await asyncio.sleep(4)
        assert saga.ended() == []
        await asyncio.to_thread(postgres.start, own_postgres)

        async def all_ended() -> bool:
            assert saga.ended() == [], "a service process ended because of the outage"
            terminal = await saga.scalar(
                "SELECT count(*) FROM {order}.orders WHERE status IN ('CONFIRMED', 'CANCELLED')"
            )
            return bool(terminal == len(orders))

        try:
            await wait_until(all_ended, timeout_s=120)
        except AssertionError as stuck:  # say where the sagas stand
            raise AssertionError(f"{stuck}: {await saga.progress()}") from None
        report = await saga.invariants()
        assert report.ok, report.violations
        statuses = await saga.scalar("SELECT count(DISTINCT status) FROM {order}.orders")
        assert statuses == 2  # both outcomes happened: the outage did not flatten the mix
        for service in ("order", "payment", "inventory", "tracker"):
            dlt = saga.config.lanes(service).dlt
            assert await read_all(kafka, dlt, at_least=0, timeout_s=3) == [], f"{service} dead-lettered"
    finally:
        await saga.close()
