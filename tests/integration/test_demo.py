"""`sagaline demo`'s driver against the running saga (in-process services): every saga
ends, the invariants hold, `--rate` publishes open loop, never faster than asked, and the
result says where the latency went, hop by hop."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producers.connection import KafkaConnection
from producers.db import qualified
from sagaline.demo import DemoOptions, absent_services, by_second, measure_hops, percentiles, run_demo
from tests.saga_support import SagaPlatform

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_an_open_loop_demo_ends_every_saga_and_paces_its_orders(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    saga = SagaPlatform(kafka, postgres_dsn, unique)
    await saga.setup([], [])
    try:
        await saga.start()
        assert saga.pool is not None
        result = await run_demo(kafka, saga.pool, saga.config, DemoOptions(orders=40, seed=3, rate=40.0))
        assert result.ok, result.as_dict()
        assert result.as_dict()["offered_rate"] == 40.0
        assert result.seconds >= 39 / 40  # the last order is published no earlier than its turn
        assert sum(result.outcomes.values()) == 40
        # where the latency goes, from the services' own timestamps: every order's request,
        # and the hops every confirmed saga takes, each counted once per event
        async with saga.pool.acquire() as conn:
            await measure_hops(conn, saga.config, result)
        hops = result.hops_ms
        assert hops["request→order"]["n"] == 40
        confirmed = result.outcomes.get("CONFIRMED", 0)
        assert confirmed > 0
        for hop in ("order→payment", "payment→inventory", "inventory→order"):
            assert hops[hop]["n"] >= confirmed, hops
        assert all(ms["p50"] <= ms["p95"] <= ms["p99"] for ms in hops.values())
    finally:
        await saga.close()


async def test_a_burst_is_measured_from_its_first_order_to_its_last_saga(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """All at once, through three senders: every saga ends; the measuring window opens after
    the seeding (the accounts are there) before the first order is published, and closes
    once every order has ended — and, asked to, once the tracker's projection shows it."""
    saga = SagaPlatform(kafka, postgres_dsn, unique)
    await saga.setup([], [])
    try:
        await saga.start()
        pool = saga.pool
        assert pool is not None
        orders = qualified(saga.config.schema("order"), "orders")
        accounts = qualified(saga.config.schema("payment"), "accounts")
        tracked = qualified(saga.config.schema("tracker"), "sagas")
        window: dict[str, datetime] = {}
        ended_in_tracker: list[int] = []

        async def began() -> None:
            assert await pool.fetchval(f"SELECT count(*) FROM {accounts}") > 0  # seeded
            window["began"] = datetime.now(UTC)

        async def ended() -> None:
            window["ended"] = datetime.now(UTC)
            ended_in_tracker.append(
                await pool.fetchval(
                    f"SELECT count(*) FROM {tracked} WHERE status IN ('CONFIRMED', 'CANCELLED')"
                )
            )

        options = DemoOptions(orders=30, seed=11, concurrency=3, cancel_rate=0.0, tracker_trail=True)
        result = await run_demo(kafka, pool, saga.config, options, began=began, ended=ended)
        assert result.ok, result.as_dict()
        assert sum(result.outcomes.values()) == 30
        assert window["began"] <= min(result.placed_at.values())
        terminal = await pool.fetchval(f"SELECT max(terminal_at) FROM {orders}")
        assert max(result.placed_at.values()) <= terminal <= window["ended"]
        assert ended_in_tracker == [30]
        assert result.tracker_trail_s is not None
        assert result.tracker_trail_s >= 0
    finally:
        await saga.close()


async def test_a_cancelled_sagas_latency_runs_from_its_cancellation(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """Every order is cancelled here, each after the demo's random wait: the latency the demo
    reports is each saga's terminal time less its CancelOrder's, not its PlaceOrder's."""
    saga = SagaPlatform(kafka, postgres_dsn, unique)
    await saga.setup([], [])
    try:
        await saga.start()
        assert saga.pool is not None
        options = DemoOptions(orders=12, seed=5, rate=20.0, cancel_rate=1.0)
        result = await run_demo(kafka, saga.pool, saga.config, options)
        assert result.ok, result.as_dict()
        assert all(result.requested_at[o] > result.placed_at[o] for o in result.order_ids)
        orders = qualified(saga.config.schema("order"), "orders")
        terminal = dict(
            await saga.pool.fetch(
                f"SELECT order_id, terminal_at FROM {orders} WHERE order_id = ANY($1)", result.order_ids
            )
        )
        from_cancel = sorted(
            (terminal[o] - result.requested_at[o]).total_seconds() * 1000 for o in result.order_ids
        )
        from_place = sorted(
            (terminal[o] - result.placed_at[o]).total_seconds() * 1000 for o in result.order_ids
        )
        assert result.latency_ms == percentiles(from_cancel)
        assert result.latency_ms != percentiles(from_place)
        # open loop: each second's p99 comes from the same latencies, by when the request went
        first = min(result.requested_at[o] for o in result.order_ids)
        assert result.by_second_ms == by_second(
            [
                (
                    (result.requested_at[o] - first).total_seconds(),
                    (terminal[o] - result.requested_at[o]).total_seconds() * 1000,
                )
                for o in result.order_ids
            ]
        )
        assert result.by_second_ms["p99_worst"] <= max(from_cancel)
    finally:
        await saga.close()


async def test_attach_names_the_participants_that_are_not_running(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    """`absent_services` reads the deployment's consumer groups on the broker: a group with no
    member is a service that is not running."""
    saga = SagaPlatform(kafka, postgres_dsn, unique)
    await saga.setup([], [])
    try:
        assert await absent_services(kafka, saga.config, wait_s=0) == ["order", "payment", "inventory"]
        await saga.start("order", "inventory")
        assert await absent_services(kafka, saga.config, wait_s=30) == ["payment"]
    finally:
        await saga.close()


def test_demo_attach_with_nothing_running_refuses_at_once(
    kafka_bootstrap: str, postgres_dsn: str, unique: str, tmp_path: Path
) -> None:
    """Without the check, `demo --platform attach` published its orders, waited out its
    timeout (300 s) and printed a result with every saga open (exit 1); now it places none and
    says why in one line, as a bad argument does (exit 2)."""
    env = {
        **os.environ,
        "SAGALINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SAGALINE_POSTGRES_DSN": postgres_dsn,
        "SAGALINE_SAGA_PREFIX": f"a{unique}_",
        "SAGALINE_TOPIC_PREFIX": f"at{unique}.",
        "SAGALINE_TOPIC_REPLICATION": "1",
        "SAGALINE_STATE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sagaline", "demo", "--orders", "5", "--platform", "attach", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # no orders placed, no result
    [line] = result.stderr.strip().splitlines()
    assert "nothing to attach to: no order, payment, inventory service is running" in line
