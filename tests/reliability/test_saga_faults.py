"""The saga under process faults: a participant SIGKILLed mid-load, restarted."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.connection import KafkaConnection
from sagas.config import SERVICES
from tests.processes import CliProcess
from tests.saga_support import SagaPlatform, order
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _env(saga: SagaPlatform) -> dict[str, str]:
    return {
        "SAGALINE_KAFKA_BOOTSTRAP": saga.kafka.bootstrap_servers,
        "SAGALINE_POSTGRES_DSN": saga.postgres_dsn,
        "SAGALINE_SAGA_PREFIX": saga.config.prefix,
        "SAGALINE_TOPIC_PREFIX": saga.config.topics.prefix,
        "SAGALINE_TOPIC_PARTITIONS": "3",
        "SAGALINE_TOPIC_REPLICATION": "1",
        "SAGALINE_RETRY_DELAYS_S": "0.5,1,2",
        # small units of work, so 300 orders take many steps and the kill lands mid-stream:
        # at the default (500) one unit can take a whole burst from 20 confirmed to 300
        "SAGALINE_WORKER_MAX_RECORDS": "10",
    }


@pytest.mark.parametrize("victim", ["payment", "inventory", "order"])
async def test_a_participant_killed_mid_load_loses_nothing_and_charges_nobody_twice(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path, victim: str
) -> None:
    """Setup: the four services as processes; 300 orders from 300 customers for a SKU with
    stock for about half of them. Fault: one participant is SIGKILLed while sagas are in
    flight, and restarted. Validate: every saga ends, no order is charged twice, money and
    stock invariants hold."""
    saga = SagaPlatform(kafka, postgres_dsn, unique)
    await saga.setup([(f"c{i}", 50_000) for i in range(300)], [("lamp", 150), ("mug", 10_000)])
    processes = {
        name: CliProcess(["worker", name, "--metrics-port", "0"], _env(saga), tmp_path / f"{name}.log")
        for name in SERVICES
    }
    try:
        await saga.publish(
            *[
                order(f"o-{i}", customer=f"c{i}", items=[("lamp", 1, 3000), ("mug", 2, 700)])
                for i in range(300)
            ]
        )

        async def some_confirmed() -> bool:
            done = await saga.scalar("SELECT count(*) FROM {order}.orders WHERE status = 'CONFIRMED'")
            return bool(done >= 20)

        await wait_until(some_confirmed, timeout_s=90)
        processes[victim].kill()
        open_at_kill = await saga.scalar(
            "SELECT count(*) FROM {order}.orders WHERE status NOT IN ('CONFIRMED', 'CANCELLED')"
        )
        processes[victim] = CliProcess(
            ["worker", victim, "--metrics-port", "0"], _env(saga), tmp_path / f"{victim}-2.log"
        )

        async def all_ended() -> bool:
            ended = await saga.scalar(
                "SELECT count(*) FROM {order}.orders WHERE status IN ('CONFIRMED', 'CANCELLED')"
            )
            return bool(ended == 300)

        await wait_until(all_ended, timeout_s=180)
        report = await saga.invariants()
        assert report.ok, report.violations
        assert open_at_kill > 0, "the kill should land while sagas are open"
        assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 300
        sold = await saga.scalar("SELECT reserved - released FROM {inventory}.stock WHERE sku = 'lamp'")
        assert sold == await saga.scalar("SELECT count(*) FROM {order}.orders WHERE status = 'CONFIRMED'")
    finally:
        for process in processes.values():
            if process.proc.poll() is None:
                process.terminate()
        await saga.close()
