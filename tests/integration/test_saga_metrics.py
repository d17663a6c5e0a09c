"""The saga metrics the tracker exposes, with exact counts, on real Kafka and PostgreSQL: a
compensated saga, a confirmed one, a stuck one that recovers, and a redelivery that counts
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from producers.connection import KafkaConnection
from tests.saga_support import SagaPlatform, order
from tests.support import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ACCOUNTS = [("alice", 100_000)]
STOCK = [("mug", 100), ("rare", 0)]


@pytest.fixture
async def saga(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[SagaPlatform]:
    platform = SagaPlatform(kafka, postgres_dsn, unique, stuck_after_s=1.0)
    await platform.setup(ACCOUNTS, STOCK)
    yield platform
    await platform.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def step_counts(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.labels["step"]: sample.value
        for metric in registry.collect()
        if metric.name == "sagaline_saga_step_duration_seconds"
        for sample in metric.samples
        if sample.name.endswith("_count") and sample.value
    }


async def test_a_compensated_and_a_confirmed_saga_give_exact_outcome_duration_and_step_metrics(
    saga: SagaPlatform,
) -> None:
    await saga.start()
    await saga.publish(order("o-comp", items=[("mug", 1, 1500), ("rare", 1, 500)]))
    await saga.publish(order("o-ok", items=[("mug", 1, 1500)]))
    await saga.wait_status("o-comp", "CANCELLED")
    await saga.wait_status("o-ok", "CONFIRMED")
    tracker = saga.registries["tracker"]

    async def both_counted() -> bool:
        return value(tracker, "sagaline_saga_duration_seconds_count", status="CANCELLED") == 1 and (
            value(tracker, "sagaline_saga_duration_seconds_count", status="CONFIRMED") == 1
        )

    await wait_until(both_counted)
    assert value(tracker, "sagaline_saga_completed_total", status="CANCELLED", reason="out_of_stock") == 1
    assert value(tracker, "sagaline_saga_completed_total", status="CONFIRMED", reason="none") == 1
    assert (
        sum(
            s.value
            for m in tracker.collect()
            if m.name == "sagaline_saga_completed"
            for s in m.samples
            if s.name == "sagaline_saga_completed_total"
        )
        == 2
    )
    timelines: int = await saga.scalar(
        "SELECT count(*) FROM {tracker}.timeline WHERE order_id IN ('o-comp', 'o-ok')"
    )
    # one step per event after each saga's first: the compensation's steps included
    assert step_counts(tracker) == {
        "OrderPlaced": 2,
        "PaymentCompleted": 2,
        "StockReserved": 1,
        "OrderConfirmed": 1,
        "StockRejected": 1,  # the order service asks for the refund without an OrderCancelling
        "PaymentRefunded": 1,
        "OrderCancelled": 1,
    }
    assert sum(step_counts(tracker).values()) == timelines - 2
    duration = value(tracker, "sagaline_saga_duration_seconds_sum", status="CANCELLED")
    first_to_last = await saga.scalar(
        "SELECT extract(epoch FROM max(occurred_at) - min(occurred_at)) FROM {tracker}.timeline"
        " WHERE order_id = 'o-comp'"
    )
    assert duration == pytest.approx(float(first_to_last), abs=1e-3)

    # every event delivered again: the tracker's inbox drops them, and nothing counts twice
    await saga.stop("tracker")
    await rewind(saga, "tracker")
    await saga.start("tracker")
    registry = saga.registries["tracker"]

    async def redelivered() -> bool:
        group = saga.config.group("tracker")
        return value(registry, "sagaline_consumer_duplicates_skipped_total", group=group) == timelines

    await wait_until(redelivered)
    # the timeline is the tracker's inbox: no row twice, and no inbox table beside it
    assert timelines == await saga.scalar(
        "SELECT count(*) FROM {tracker}.timeline WHERE order_id IN ('o-comp', 'o-ok')"
    )
    assert await saga.scalar("SELECT to_regclass('{tracker}.inbox')") is None
    assert step_counts(registry) == {}
    assert value(registry, "sagaline_saga_duration_seconds_count", status="CONFIRMED") == 0
    assert value(registry, "sagaline_saga_completed_total", status="CANCELLED", reason="out_of_stock") == 0


async def rewind(saga: SagaPlatform, service: str) -> None:
    """Commit offset 0 for every partition of the service's source topics (it is stopped)."""
    topics = saga.config.topics
    consumer = AIOKafkaConsumer(
        **saga.kafka.client_kwargs(), group_id=saga.config.group(service), enable_auto_commit=False
    )
    consumer.subscribe([topics.ingress, topics.orders, topics.payments, topics.inventory])
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        await consumer.commit({tp: 0 for tp in consumer.assignment()})
    finally:
        await consumer.stop()


async def test_a_saga_held_past_the_stuck_threshold_shows_as_stuck_until_it_moves(saga: SagaPlatform) -> None:
    await saga.start("order", "inventory", "tracker")  # payment is not answering
    await saga.publish(order("o-held"))
    await saga.wait_status("o-held", "PENDING_PAYMENT")
    tracker = saga.registries["tracker"]

    async def stuck() -> bool:
        return value(tracker, "sagaline_sagas_stuck") == 1

    await wait_until(stuck, timeout_s=30)
    assert value(tracker, "sagaline_sagas_open", step="payment: charging") == 1
    assert value(tracker, "sagaline_sagas_oldest_open_age_seconds") >= 1.0

    await saga.start("payment")
    await saga.wait_status("o-held", "CONFIRMED")

    async def recovered() -> bool:
        return value(tracker, "sagaline_sagas_stuck") == 0 and (
            value(tracker, "sagaline_saga_completed_total", status="CONFIRMED", reason="none") == 1
        )

    await wait_until(recovered, timeout_s=30)
    assert value(tracker, "sagaline_sagas_open", step="payment: charging") == 0
