"""Fault-injection scenarios, judged by the chaos checker (tests/reliability/chaos/).

Each scenario runs the saga's services as OS processes on a deployment of its own, publishes
a fixed-seed workload, injects its faults through the nemesis (which always heals), waits
for quiescence and asks the checker. The negative controls switch a defect on and must be
caught: a checker that cannot fail proves nothing. `make test` runs a fast subset; `make
chaos` runs every scenario (`-m chaos`) and prints the table (`python -m tests.reliability.chaos.report`).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from producers.connection import KafkaConnection
from tests.reliability.chaos.harness import Chaos, nemesis
from tests.reliability.chaos.workload import Workload, plan
from tests.saga_support import SagaPlatform
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.fixture
async def saga(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[SagaPlatform]:
    # deadlines far beyond any fault here: a lost event must show as a stuck saga, never
    # hide behind a deadline cancellation that compensates it
    platform = SagaPlatform(kafka, postgres_dsn, unique, payment_timeout_s=600, stock_timeout_s=600)
    yield platform
    await platform.close()


async def _deploy(saga: SagaPlatform, workload: Workload) -> None:
    await saga.setup(list(workload.accounts.items()), list(workload.stock.items()))


@pytest.fixture
def chaos_factory(saga: SagaPlatform, tmp_path: Path) -> Iterator[Any]:
    made: list[Chaos] = []

    def make(scenario: str) -> Chaos:
        chaos = Chaos(saga, tmp_path, scenario)
        made.append(chaos)
        return chaos

    yield make
    for chaos in made:
        chaos.stop_all()


async def _ordered_at_least(saga: SagaPlatform, count: int) -> None:
    async def reached() -> bool:
        return bool(await saga.scalar("SELECT count(*) FROM {payment}.payments") >= count)

    await wait_until(reached, timeout_s=120)


async def test_negative_control_a_relay_that_drops_rows_is_caught_by_i1_and_i5(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 200 orders; the order service's relay has the `relay.drop` defect (one row in
    ten marked published, never sent).
    Fault: none besides the defect.
    Validate: the checker reports stuck sagas (I1) and lost events (I5)."""
    workload = plan("nc1.", 200)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("NC1 relay drops rows")
    chaos.failpoints["order"] = "relay.drop=on"
    await chaos.start_all()
    await chaos.publish(workload)
    await chaos.quiesce(workload, timeout_s=20)
    verdict = await chaos.verdict(workload)
    assert verdict.counts["I1"] > 0, verdict.summary()
    assert verdict.counts["I5"] > 0, verdict.summary()


async def test_negative_control_a_payment_that_debits_twice_is_caught_by_i2(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 200 orders; the payment service has the `payment.debit-twice` defect.
    Fault: none besides the defect.
    Validate: every saga ends as planned, but the checker reports the money (I2)."""
    workload = plan("nc2.", 200)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("NC2 payment debits twice")
    chaos.failpoints["payment"] = "payment.debit-twice=on"
    await chaos.start_all()
    await chaos.publish(workload)
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.counts["I2"] > 0, verdict.summary()
    assert verdict.counts["I1"] == 0, verdict.summary()


async def test_s1_the_payment_worker_sigkilled_three_times_under_load(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders published at 100/s to the four services.
    Fault: SIGKILL of the payment worker three times while sagas are in flight; each time it
    is restarted.
    Validate: no invariant is violated."""
    workload = plan("s1.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S1 kill payment x3")
    await chaos.start_all()
    async with nemesis(chaos):
        publishing = asyncio.create_task(chaos.publish(workload, rate=100))
        for round_ in range(3):
            await _ordered_at_least(saga, 150 * (round_ + 1))
            chaos.signal("payment", signal.SIGKILL)
            await asyncio.sleep(1)
            chaos.start("payment")
        await publishing
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, verdict.summary()


async def test_s2_a_crash_after_the_database_commit_before_the_offset_commit(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders; payment and inventory armed with `worker.after-commit=exit@5`.
    Fault: each dies right after its fifth batch committed in PostgreSQL, before its Kafka
    offsets; the nemesis restarts them unarmed, and they are redelivered that batch.
    Validate: no invariant is violated (the inbox drops the redelivered batch)."""
    workload = plan("s2.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S2 crash between DB commit and offset commit")
    chaos.failpoints["payment"] = chaos.failpoints["inventory"] = "worker.after-commit=exit@5"
    await chaos.start_all()
    async with nemesis(chaos):
        await chaos.publish(workload, rate=100)

        async def both_crashed() -> bool:
            return not chaos.alive("payment") and not chaos.alive("inventory")

        await wait_until(both_crashed, timeout_s=120)
        chaos.run.faults += 2
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, verdict.summary()
