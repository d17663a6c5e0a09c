"""The reference saga end to end on real Kafka and PostgreSQL: every path of the design."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from producers.connection import KafkaConnection
from schemas.messages import CancelOrder
from tests.saga_support import SagaPlatform, order
from tests.support import decoded, read_all, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ACCOUNTS = [("alice", 100_000), ("broke", 0)]
STOCK = [("mug", 100), ("rare", 0), ("lamp", 5)]


@pytest.fixture
async def saga(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[SagaPlatform]:
    platform = SagaPlatform(kafka, postgres_dsn, unique)
    await platform.setup(ACCOUNTS, STOCK)
    yield platform
    await platform.close()


async def _assert_balanced(saga: SagaPlatform) -> None:
    report = await saga.invariants()
    assert report.ok, report.violations


async def test_happy_path_confirms_charges_and_reserves(saga: SagaPlatform) -> None:
    await saga.start()
    await saga.publish(order("o-1", items=[("mug", 2, 1500)]))
    assert (await saga.wait_status("o-1", "CONFIRMED"))["payment"] == "completed"
    assert (
        await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
        == 97_000
    )
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 98
    await _assert_balanced(saga)


async def test_a_declined_payment_cancels_without_touching_stock(saga: SagaPlatform) -> None:
    await saga.start()
    await saga.publish(order("o-2", customer="broke"))
    result = await saga.wait_status("o-2", "CANCELLED")
    assert (result["cancel_reason"], result["payment"]) == ("payment_declined", "failed")
    assert (
        await saga.scalar("SELECT reason FROM {payment}.payments WHERE order_id = 'o-2'")
        == "insufficient funds"
    )
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 100
    await _assert_balanced(saga)


async def test_rejected_stock_is_compensated_by_a_refund_then_cancelled(saga: SagaPlatform) -> None:
    await saga.start()
    await saga.publish(order("o-3", items=[("mug", 1, 1500), ("rare", 1, 500)]))
    result = await saga.wait_status("o-3", "CANCELLED")
    assert (result["cancel_reason"], result["payment"], result["stock"]) == (
        "out_of_stock",
        "refunded",
        "rejected",
    )
    assert (
        await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
        == 100_000
    )
    assert (
        await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 100
    )  # all or nothing
    await _assert_balanced(saga)


async def test_customer_cancellation_before_payment(saga: SagaPlatform) -> None:
    await saga.start("order", "inventory", "tracker")  # payment is not answering yet
    await saga.publish(order("o-4"))
    await saga.wait_status("o-4", "PENDING_PAYMENT")
    await saga.publish(CancelOrder(order_id="o-4", idempotency_key="cancel-o-4"))
    await saga.wait_status("o-4", "CANCELLING")
    await saga.start("payment")  # charges, then sees the cancellation and refunds
    result = await saga.wait_status("o-4", "CANCELLED")
    assert result["cancel_reason"] == "customer_request"
    assert (
        await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
        == 100_000
    )
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 100
    await _assert_balanced(saga)


async def test_a_cancellation_that_overtakes_its_order_cancels_it_with_nothing_charged(
    saga: SagaPlatform,
) -> None:
    """Setup: the saga, all services running.
    Fault: the CancelOrder reaches the order service before its PlaceOrder (as when the
    PlaceOrder waited in a retry lane after a database blip).
    Validate: the order ends CANCELLED by the customer, nothing is charged or reserved,
    the cancellation is not dead-lettered, and the tracker shows the saga ended."""
    await saga.start()
    await saga.publish(CancelOrder(order_id="o-early", idempotency_key="cancel-o-early"))
    await saga.publish(order("o-early"))
    result = await saga.wait_status("o-early", "CANCELLED")
    assert result["cancel_reason"] == "customer_request"
    assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 0
    assert (
        await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
        == 100_000
    )
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 100

    async def tracked_as_cancelled() -> bool:
        status = await saga.scalar("SELECT status FROM {tracker}.sagas WHERE order_id = 'o-early'")
        return bool(status == "CANCELLED")

    await wait_until(tracked_as_cancelled)
    await _assert_balanced(saga)


async def test_customer_cancellation_after_payment(saga: SagaPlatform) -> None:
    await saga.start("order", "payment", "tracker")  # inventory is not answering yet
    await saga.publish(order("o-5"))
    await saga.wait_status("o-5", "AWAITING_STOCK")
    await saga.publish(CancelOrder(order_id="o-5", idempotency_key="cancel-o-5"))
    await saga.start("inventory")
    result = await saga.wait_status("o-5", "CANCELLED")
    assert (result["payment"], result["cancel_reason"]) == ("refunded", "customer_request")
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 100
    await _assert_balanced(saga)


async def test_customer_cancellation_after_reservation_releases_and_refunds(saga: SagaPlatform) -> None:
    await saga.start()
    await saga.publish(order("o-6", items=[("lamp", 2, 4000)]))
    await saga.wait_status("o-6", "CONFIRMED")
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'lamp'") == 3
    await saga.publish(CancelOrder(order_id="o-6", idempotency_key="cancel-o-6"))
    result = await saga.wait_status("o-6", "CANCELLED")
    assert (result["payment"], result["stock"]) == ("refunded", "released")
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'lamp'") == 5
    assert (
        await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
        == 100_000
    )
    await _assert_balanced(saga)


async def test_a_duplicate_request_makes_one_order_and_a_changed_body_is_rejected(
    saga: SagaPlatform, kafka: KafkaConnection
) -> None:
    await saga.start()
    first = order("o-7")
    await saga.publish(first, first)  # the upstream retried
    await saga.wait_status("o-7", "CONFIRMED")
    changed = first.model_copy(
        update={"order_id": "o-7b", "items": order("x", items=[("mug", 5, 1500)]).items}
    )
    await saga.publish(changed)

    async def rejected() -> bool:
        envelopes = decoded(await read_all(kafka, saga.config.topics.orders, at_least=1, timeout_s=5))
        return any(type(e.data).__name__ == "OrderRejected" for e in envelopes)

    await wait_until(rejected, timeout_s=30)
    assert await saga.scalar("SELECT count(*) FROM {order}.orders") == 1
    assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 1
    assert (
        await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
        == 98_500
    )
    envelopes = decoded(await read_all(kafka, saga.config.topics.orders, at_least=3))
    [rejection] = [e.data for e in envelopes if type(e.data).__name__ == "OrderRejected"]
    assert rejection.order_id == "o-7b"
    assert "used for a different request" in rejection.reason  # type: ignore[attr-defined]
    await _assert_balanced(saga)


async def test_the_tracker_keeps_an_order_a_reused_id_was_rejected_for_and_ends_a_repeat(
    saga: SagaPlatform,
) -> None:
    """Setup: order o-t1 confirmed.
    Fault: another request reuses o-t1's order id (with its own key); the first request is
    repeated under a new order id o-t2 (same key and body).
    Validate: o-t1 stays CONFIRMED in the tracker (the rejection is only in its timeline);
    o-t2 ends REJECTED as a repeat of o-t1; there is still one order and one charge."""
    await saga.start()
    first = order("o-t1")
    await saga.publish(first)
    await saga.wait_status("o-t1", "CONFIRMED")
    await saga.publish(
        order("o-t1", items=[("mug", 3, 1500)]).model_copy(update={"idempotency_key": "other-key-t1"})
    )
    await saga.publish(first.model_copy(update={"order_id": "o-t2"}))

    async def both_answered() -> bool:
        rejections = await saga.scalar(
            "SELECT count(*) FROM {tracker}.timeline"
            " WHERE type = 'OrderRejected' AND order_id IN ('o-t1', 'o-t2')"
        )
        return bool(rejections == 2)

    await wait_until(both_answered)
    rows = await saga.pool.fetch(  # type: ignore[union-attr]
        f'SELECT order_id, status, reason FROM "{saga.config.schema("tracker")}".sagas'
        " WHERE order_id IN ('o-t1', 'o-t2') ORDER BY order_id"
    )
    assert [(r["order_id"], r["status"]) for r in rows] == [("o-t1", "CONFIRMED"), ("o-t2", "REJECTED")]
    assert "a repeat of order 'o-t1'" in rows[1]["reason"]
    assert await saga.scalar("SELECT count(*) FROM {order}.orders") == 1
    assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 1


async def test_the_tracker_shows_the_whole_timeline(saga: SagaPlatform) -> None:
    await saga.start()
    await saga.publish(order("o-8"))
    await saga.wait_status("o-8", "CONFIRMED")

    async def tracked() -> bool:
        return await saga.scalar("SELECT status FROM {tracker}.sagas WHERE order_id = 'o-8'") == "CONFIRMED"

    await wait_until(tracked, timeout_s=30)
    types = await saga.scalar(
        "SELECT array_agg(type ORDER BY occurred_at) FROM {tracker}.timeline WHERE order_id = 'o-8'"
    )
    assert types == ["PlaceOrder", "OrderPlaced", "PaymentCompleted", "StockReserved", "OrderConfirmed"]


async def test_stock_deadline_expiry_cancels_and_compensates(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    saga = SagaPlatform(kafka, postgres_dsn, unique, stock_timeout_s=2.0)
    await saga.setup(ACCOUNTS, STOCK)
    try:
        await saga.start("order", "payment", "tracker")  # inventory is down
        await saga.publish(order("o-9"))
        cancelling = await saga.wait_status("o-9", "CANCELLING", timeout_s=30)
        assert cancelling["cancel_reason"] == "deadline_expired"
        await saga.start("inventory")  # comes back: answers the payment, then the cancellation
        result = await saga.wait_status("o-9", "CANCELLED")
        assert result["payment"] == "refunded"
        assert result["stock"] in ("rejected", "released")
        assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'mug'") == 100
        await _assert_balanced(saga)
    finally:
        await saga.close()


async def test_a_late_payment_after_the_deadline_is_refunded(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    saga = SagaPlatform(kafka, postgres_dsn, unique, payment_timeout_s=2.0)
    await saga.setup(ACCOUNTS, STOCK)
    try:
        await saga.start("order", "inventory", "tracker")  # payment is down past the deadline
        await saga.publish(order("o-10", items=[("mug", 1, 2500)]))
        await saga.wait_status("o-10", "CANCELLING", timeout_s=30)
        await saga.start("payment")  # the late charge succeeds, and is refunded
        result = await saga.wait_status("o-10", "CANCELLED")
        assert (result["cancel_reason"], result["payment"]) == ("deadline_expired", "refunded")
        assert (
            await saga.scalar("SELECT status FROM {payment}.payments WHERE order_id = 'o-10'") == "refunded"
        )
        assert (
            await saga.scalar("SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'")
            == 100_000
        )
        await _assert_balanced(saga)
    finally:
        await saga.close()


async def test_200_concurrent_orders_for_scarce_stock_never_oversell(saga: SagaPlatform) -> None:
    """Setup: 20 lamps; 200 orders from 200 customers asking for 300 lamps, published at once.
    Validate: exactly the lamps confirmed are reserved, never more than there were; every
    saga ends; money and stock invariants hold."""
    assert saga.pool is not None
    async with saga.pool.acquire() as conn:
        await conn.executemany(
            f'INSERT INTO "{saga.config.schema("payment")}".accounts VALUES ($1, $2, $3)',
            [(f"c{i}", "EUR", 50_000) for i in range(200)],
        )
        await conn.execute(
            f'UPDATE "{saga.config.schema("inventory")}".stock SET initial = 20, available = 20'
            " WHERE sku = 'lamp'"
        )
    await saga.start()
    orders = [order(f"o-s{i}", customer=f"c{i}", items=[("lamp", 1 + i % 2, 4000)]) for i in range(200)]
    await saga.publish(*orders)

    async def all_ended() -> bool:
        ended = await saga.scalar(
            "SELECT count(*) FROM {order}.orders WHERE status IN ('CONFIRMED', 'CANCELLED')"
        )
        return bool(ended == 200)

    await wait_until(all_ended, timeout_s=120)
    sold = await saga.scalar(
        "SELECT COALESCE(sum((i->>'quantity')::int), 0) FROM {order}.orders, jsonb_array_elements(items) i"
        " WHERE status = 'CONFIRMED'"
    )
    assert sold == await saga.scalar("SELECT reserved - released FROM {inventory}.stock WHERE sku = 'lamp'")
    assert sold <= 20
    assert await saga.scalar("SELECT available FROM {inventory}.stock WHERE sku = 'lamp'") == 20 - sold
    assert await saga.scalar("SELECT count(*) FROM {order}.orders WHERE cancel_reason = 'out_of_stock'") > 0
    await _assert_balanced(saga)
