"""Fault-injection scenarios, judged by the chaos checker (tests/reliability/chaos/).

Each scenario runs the saga's services as OS processes on a deployment of its own, publishes
a fixed-seed workload, injects its faults through the nemesis (which always heals), waits
for quiescence and asks the checker. The negative controls switch a defect on and must be
caught: a checker that cannot fail proves nothing. `make test` runs a fast subset; `make
chaos` runs every scenario (`-m chaos`) and prints the table (`python -m tests.reliability.chaos.report`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from producers.connection import KafkaConnection
from sagaline.localstack import postgres
from sagaline.localstack.process import read_pid
from sagaline.localstack.stack import LocalStack
from tests.reliability.chaos.harness import Chaos, nemesis
from tests.reliability.chaos.workload import PlannedOrder, Workload, plan
from tests.reliability.conftest import ROOT
from tests.saga_support import SagaPlatform
from tests.support import STACK_PORTS, wait_until

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


async def test_negative_control_a_payment_that_emits_every_event_twice_is_caught_by_i4(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 200 orders; the payment service has the `emit.twice` defect (each event staged
    twice under two event ids: a non-idempotent emitter, which no inbox downstream can
    recognise as a duplicate).
    Fault: none besides the defect.
    Validate: the checker reports duplicate side effects (I4)."""
    workload = plan("nc3.", 200)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("NC3 payment emits every event twice")
    chaos.failpoints["payment"] = "emit.twice=on"
    await chaos.start_all()
    await chaos.publish(workload)
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.counts["I4"] > 0, verdict.summary()


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
    assert verdict.ok, chaos.explain()


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
    assert verdict.ok, chaos.explain()


async def test_s10_poison_and_a_permanent_failure_are_dead_lettered_then_replayed(
    saga: SagaPlatform, chaos_factory: Any, kafka: KafkaConnection
) -> None:
    """Setup: 1,000 orders, the services and the DLQ indexer; 400 orders first.
    Fault: three records that are not events are written to the ingress topic (poison);
    payment's accounts table is renamed (a bad migration) while 30 more orders are placed,
    so each of their charges fails permanently; the table is renamed back.
    Validate: `sagaline dlq replay --group <payment>` sends the 30 back and their sagas end
    as planned; the dead-letter topics hold exactly the poison (for both groups reading
    ingress) and the 30; no other invariant is violated."""
    workload = plan("s10.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S10 poison, permanent failure, replay")
    await chaos.start_all(dlq=True)
    first, held, rest = workload.orders[:400], workload.orders[400:430], workload.orders[430:]
    config = saga.config
    poison_keys = [f"poison-{n}".encode() for n in range(3)]
    async with nemesis(chaos):
        await chaos.publish(first, rate=100)
        await chaos.quiesce(first)
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for key in poison_keys:
                await producer.send_and_wait(config.topics.ingress, b"\xff not an event", key=key)
        finally:
            await producer.stop()
        await saga.scalar("ALTER TABLE {payment}.accounts RENAME TO accounts_broken")
        chaos.run.faults += 4
        await chaos.publish(held)
        dead = f'SELECT count(*) FROM "{config.schema("dlq")}".dead_letters WHERE consumer_group = $1'

        async def held_dead_lettered() -> bool:
            return bool(await saga.scalar(dead, config.group("payment")) == len(held))

        await wait_until(held_dead_lettered, timeout_s=120)
        await saga.scalar("ALTER TABLE {payment}.accounts_broken RENAME TO accounts")
        command = ["dlq", "replay", "--group", config.group("payment"), "--yes", "--json"]
        replay = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "sagaline", *command],
            env={**os.environ, **chaos.env("dlq")}, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["sent"] == len(held)
        await chaos.publish(rest, rate=100)
    await chaos.quiesce(workload)
    poison = {(config.group(g), key) for g in ("order", "tracker") for key in poison_keys}
    poison |= {(config.group("payment"), o.order_id.encode()) for o in held}
    verdict = await chaos.verdict(workload, poison)
    assert verdict.ok, chaos.explain()


# --- make chaos: the long scenarios ---------------------------------------------------


async def _dies(chaos: Chaos, key: str, timeout_s: float = 120.0) -> None:
    async def dead() -> bool:
        return not chaos.alive(key)

    await wait_until(dead, timeout_s=timeout_s)
    chaos.run.faults += 1


@pytest.mark.chaos
async def test_s3_the_relay_crashes_before_the_send_and_after_the_send_before_marking(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders; the order service (its relay publishes its outbox).
    Fault: it dies at `relay.before-send` (third pass), is restarted armed with
    `relay.after-send` (the broker acknowledged, the rows are not marked), dies again, and
    is restarted unarmed: those rows are sent a second time with the same event ids.
    Validate: no invariant is violated (consumers drop the re-sent events)."""
    workload = plan("s3.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S3 relay crash before send / after send")
    chaos.failpoints["order"] = "relay.before-send=exit@3"
    await chaos.start_all()
    async with nemesis(chaos):
        publishing = asyncio.create_task(chaos.publish(workload, rate=100))
        await _dies(chaos, "order")
        chaos.processes["order"].reap()
        chaos.failpoints["order"] = "relay.after-send=exit@3"
        chaos.start("order")
        await _dies(chaos, "order")
        await publishing
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, chaos.explain()


@pytest.mark.chaos
async def test_s4_one_of_two_payment_workers_is_stopped_then_a_third_joins(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders; two payment workers in one group.
    Fault: SIGTERM to one mid-load (its partitions move to the other after it finishes and
    commits), then a third joins (another rebalance).
    Validate: the stopped worker exits 0; no invariant is violated."""
    workload = plan("s4.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S4 SIGTERM one of two, add a third")
    await chaos.start_all()
    chaos.start("payment", instance="payment#2")
    await chaos.serving("payment#2")  # its SIGTERM is the fault, not a kill during start-up
    async with nemesis(chaos):
        publishing = asyncio.create_task(chaos.publish(workload, rate=100))
        await _ordered_at_least(saga, 300)
        chaos.run.faults += 1
        assert await asyncio.to_thread(chaos.processes["payment#2"].terminate) == 0
        await _ordered_at_least(saga, 600)
        chaos.start("payment", instance="payment#3")
        chaos.run.faults += 1
        await publishing
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, chaos.explain()


@pytest.mark.chaos
async def test_s5_a_payment_worker_paused_past_its_session_timeout_rejoins(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders; two payment workers.
    Fault: SIGSTOP one for 20 s (past the consumer session timeout: the group fences it and
    gives its partitions to the other), then SIGCONT — the zombie's commit is refused.
    Validate: the zombie rejoins instead of exiting; no invariant is violated."""
    workload = plan("s5.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S5 SIGSTOP past the session timeout")
    await chaos.start_all()
    chaos.start("payment", instance="payment#2")
    async with nemesis(chaos):
        publishing = asyncio.create_task(chaos.publish(workload, rate=100))
        await _ordered_at_least(saga, 200)
        chaos.signal("payment#2", signal.SIGSTOP)
        await asyncio.sleep(20)
        chaos.signal("payment#2", signal.SIGCONT)
        await publishing
        await asyncio.sleep(10)
        assert chaos.alive("payment#2"), "the fenced worker exited instead of rejoining"
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, chaos.explain()


@pytest.mark.chaos
async def test_s12_a_payment_worker_frozen_inside_its_transaction_holds_nothing_for_long(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders; two payment workers, the second armed with
    `handler.OrderPlaced=stall@3`.
    Fault: the second freezes for good inside the transaction of its third batch of
    OrderPlaced events (claimed in the inbox, keys locked, nothing committed). Kafka gives
    its partitions to the first after the session timeout; that batch's events come to the
    first again, whose claim waits on the frozen transaction's rows until PostgreSQL ends
    the idle session (SAGALINE_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S, 30 s by default).
    Validate: every saga ends while the frozen worker is still frozen; no invariant is
    violated. (With the timeout off, that batch's sagas would wait for as long as the
    process stays frozen.)"""
    workload = plan("s12.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S12 a payment worker frozen inside its transaction")
    await chaos.start_all()
    chaos.failpoints["payment"] = "handler.OrderPlaced=stall@3"
    chaos.start("payment", instance="payment#2")
    chaos.failpoints.pop("payment")  # nothing started later is armed
    chaos.run.faults += 1
    idle = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sagaline-payment'"
        " AND state = 'idle in transaction' AND now() - state_change > interval '5 s'"
    )

    async def frozen_in_a_transaction() -> bool:
        return bool(await saga.scalar(idle))

    async with nemesis(chaos):
        publishing = asyncio.create_task(chaos.publish(workload, rate=100))
        await wait_until(frozen_in_a_transaction, timeout_s=60)  # the fault happened as planned
        await publishing
        await chaos.quiesce(workload)
        assert chaos.alive("payment#2"), "the armed worker exited instead of freezing"
        stalled = await saga.scalar(idle)
        chaos.processes["payment#2"].kill()  # SIGTERM cannot end a frozen process
        chaos.record("signal", process="payment#2", signal="SIGKILL")
    assert stalled == 0, "a payment session still sits idle in its transaction"
    verdict = await chaos.verdict(workload)
    assert verdict.ok, chaos.explain()


@pytest.mark.chaos
async def test_s9_postgresql_terminates_the_payment_workers_sessions_during_commits(
    saga: SagaPlatform, chaos_factory: Any
) -> None:
    """Setup: 1,000 orders.
    Fault: `pg_terminate_backend` on every session of the payment service, five times
    under load (transient: reconnect and retry, never a dead letter).
    Validate: no invariant is violated and nothing is dead-lettered."""
    workload = plan("s9.", 1000)
    await _deploy(saga, workload)
    chaos: Chaos = chaos_factory("S9 pg_terminate_backend on payment sessions")
    await chaos.start_all()
    async with nemesis(chaos):
        publishing = asyncio.create_task(chaos.publish(workload, rate=100))
        for round_ in range(5):
            await _ordered_at_least(saga, 100 * (round_ + 1))
            await saga.scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'sagaline-payment' AND datname = current_database()"
            )
            chaos.run.faults += 1
        await publishing
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, chaos.explain()


@pytest.mark.chaos
async def test_s11_a_cancellation_overtakes_its_order_through_a_retry_lane(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, chaos_factory_slow_lanes: Any
) -> None:
    """Setup: 100 orders, every one cancelled by its customer right after placing it; retry
    lanes of 5, 10 and 20 s.
    Fault: the order service fails every PlaceOrder transiently (`handler.PlaceOrder=fail`),
    so each waits in the first retry lane while its CancelOrder is handled; the service is
    then restarted healthy.
    Validate: every order ends CANCELLED by its customer with nothing charged or reserved,
    nothing is dead-lettered, and no invariant is violated."""
    saga, chaos = chaos_factory_slow_lanes
    workload = plan("s11.", 100)
    workload = Workload(
        [PlannedOrder(o.command, o.funded, o.scarce, 0.05) for o in workload.orders],
        workload.accounts,
        workload.stock,
    )
    await _deploy(saga, workload)
    chaos.failpoints["order"] = "handler.PlaceOrder=fail"
    await chaos.start_all()
    async with nemesis(chaos):
        await chaos.publish(workload)
        early = 'SELECT count(*) FROM "{}".early_cancellations'.format(saga.config.schema("order"))

        async def all_cancels_seen() -> bool:
            return bool(await saga.scalar(early) == len(workload.orders))

        await wait_until(all_cancels_seen, timeout_s=30)
        chaos.signal("order", signal.SIGKILL)
        chaos.failpoints.pop("order")
        chaos.start("order")
    await chaos.quiesce(workload)
    verdict = await chaos.verdict(workload)
    assert verdict.ok, chaos.explain()
    assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 0
    assert verdict.figures["outcomes"] == {"CANCELLED (customer_request)": len(workload.orders)}


@pytest.fixture
async def chaos_factory_slow_lanes(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path
) -> AsyncIterator[tuple[SagaPlatform, Chaos]]:
    saga = SagaPlatform(
        kafka,
        postgres_dsn,
        unique,
        payment_timeout_s=600,
        stock_timeout_s=600,
        retry_delays_s=(5.0, 10.0, 20.0),
    )
    chaos = Chaos(saga, tmp_path, "S11 cancellation overtakes its order via a retry lane")
    yield saga, chaos
    chaos.stop_all()
    await saga.close()


@pytest.mark.chaos
async def test_s8_postgresql_restarted_immediately_under_load(
    kafka: KafkaConnection, own_postgres: postgres.PostgresServer, unique: str, tmp_path: Path
) -> None:
    """Setup: 1,000 orders on a PostgreSQL of this test's own.
    Fault: `pg_ctl stop -m immediate` (a crash: every session cut, recovery at start) under
    load, started again 3 s later.
    Validate: the outage is transient (nothing dead-lettered), no invariant is violated."""
    saga = SagaPlatform(
        kafka,
        own_postgres.dsn,
        unique,
        payment_timeout_s=600,
        stock_timeout_s=600,
        retry_delays_s=(1.0, 2.0, 4.0, 8.0),
    )
    workload = plan("s8.", 1000)
    await _deploy(saga, workload)
    chaos = Chaos(saga, tmp_path, "S8 PostgreSQL immediate restart")
    try:
        await chaos.start_all()
        async with nemesis(chaos):
            publishing = asyncio.create_task(chaos.publish(workload, rate=100))
            await _ordered_at_least(saga, 300)
            await asyncio.to_thread(postgres.stop, own_postgres, "immediate")
            chaos.run.faults += 1
            chaos.record("postgres", action="stop -m immediate")
            await asyncio.sleep(3)
            await asyncio.to_thread(postgres.start, own_postgres)
            chaos.record("postgres", action="start")
            await publishing
        await chaos.quiesce(workload)
        verdict = await chaos.verdict(workload)
        assert verdict.ok, chaos.explain()
    finally:
        chaos.stop_all()
        await saga.close()


async def _cluster3_saga(kafka_cluster3: KafkaConnection, postgres_dsn: str, unique: str) -> SagaPlatform:
    return SagaPlatform(
        kafka_cluster3, postgres_dsn, unique, payment_timeout_s=600, stock_timeout_s=600, replication=3
    )


def _cluster3_stack() -> LocalStack:
    """The local three-node cluster the `kafka_cluster3` fixture runs (its nodes are ours to kill)."""
    return LocalStack(
        state_dir=ROOT / ".sagaline" / "test-stack-3",
        cache_dir=Path(os.environ.get("SAGALINE_CACHE_DIR", Path.home() / ".cache" / "sagaline")),
        kafka_port=STACK_PORTS["test-stack-3"][0],
        postgres_port=STACK_PORTS["test-stack-3"][1],
        kafka_heap="768m",
    )


async def _leader_of(kafka: KafkaConnection, topic: str) -> int:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
        return int(next(p["leader"] for p in description["partitions"] if p["partition"] == 0))
    finally:
        await admin.close()


@pytest.mark.chaos
async def test_s6_the_partition_leader_broker_is_sigkilled_and_restarted_three_times(
    kafka_cluster3: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path
) -> None:
    """Setup: three KRaft brokers, topics with RF=3 and min.insync.replicas=2; 1,000 orders.
    Fault: three times, SIGKILL the broker leading orders.events[0], restart it.
    Validate: no invariant is violated (acks=all and the idempotent producer lose nothing)."""
    if os.environ.get("SAGALINE_TEST_KAFKA3_BOOTSTRAP"):
        pytest.fail("S6 kills brokers of the local three-node stack; unset SAGALINE_TEST_KAFKA3_BOOTSTRAP")
    saga = await _cluster3_saga(kafka_cluster3, postgres_dsn, unique)
    stack = _cluster3_stack()
    workload = plan("s6.", 1000)
    await _deploy(saga, workload)
    chaos = Chaos(saga, tmp_path, "S6 SIGKILL the leader broker x3")
    try:
        await chaos.start_all()
        async with nemesis(chaos):
            publishing = asyncio.create_task(chaos.publish(workload, rate=50))
            for round_ in range(3):
                await _ordered_at_least(saga, 150 * (round_ + 1))
                leader = await _leader_of(kafka_cluster3, saga.config.topics.orders)
                node = next(n for n in stack.kafka_nodes(3) if n.node_id == leader)
                pid = read_pid(node.pid_file)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                chaos.run.faults += 1
                chaos.record("broker", action="SIGKILL", node=leader, pid=pid)
                await asyncio.sleep(5)
                await stack.up(brokers=3)
                chaos.record("broker", action="restarted", node=leader)
            await publishing
        await chaos.quiesce(workload)
        verdict = await chaos.verdict(workload)
        assert verdict.ok, chaos.explain()
    finally:
        chaos.stop_all()
        await stack.up(brokers=3)  # whatever happened, the cluster is whole for the next test
        await saga.close()


@pytest.mark.chaos
async def test_s7_a_broker_paused_for_30_seconds(
    kafka_cluster3: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path
) -> None:
    """Setup: three brokers, RF=3, min.insync.replicas=2; 1,000 orders.
    Fault: SIGSTOP the broker leading orders.events[0] for 30 s (it stays in the cluster's
    view until its session times out), then SIGCONT.
    Validate: no invariant is violated."""
    if os.environ.get("SAGALINE_TEST_KAFKA3_BOOTSTRAP"):
        pytest.fail("S7 pauses brokers of the local three-node stack; unset SAGALINE_TEST_KAFKA3_BOOTSTRAP")
    saga = await _cluster3_saga(kafka_cluster3, postgres_dsn, unique)
    stack = _cluster3_stack()
    workload = plan("s7.", 1000)
    await _deploy(saga, workload)
    chaos = Chaos(saga, tmp_path, "S7 SIGSTOP a broker 30 s")
    pid: int | None = None
    try:
        await chaos.start_all()
        async with nemesis(chaos):
            publishing = asyncio.create_task(chaos.publish(workload, rate=50))
            await _ordered_at_least(saga, 200)
            leader = await _leader_of(kafka_cluster3, saga.config.topics.orders)
            node = next(n for n in stack.kafka_nodes(3) if n.node_id == leader)
            pid = read_pid(node.pid_file)
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            chaos.run.faults += 1
            chaos.record("broker", action="SIGSTOP", node=leader, pid=pid)
            await asyncio.sleep(30)
            os.kill(pid, signal.SIGCONT)
            pid = None
            await publishing
        await chaos.quiesce(workload)
        verdict = await chaos.verdict(workload)
        assert verdict.ok, chaos.explain()
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)  # the nemesis heals brokers too
        chaos.stop_all()
        await saga.close()
