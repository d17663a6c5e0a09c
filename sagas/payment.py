"""The payment service: charges on OrderPlaced, refunds on StockRejected or cancellation.

One `payments` row per order makes "at most one charge and at most one refund" structural:
the row is created by the charge (or by a cancellation that came first, which voids it) and
a refund only moves it from `charged` to `refunded`. A decline is a business outcome.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers import failpoints
from producers.db import DbConnection, qualified
from sagas.config import SagaConfig
from schemas import messages as m
from schemas.values import Money, StockLine


def payment_id(order_id: str) -> str:
    """Deterministic: the same order always names the same payment."""
    return f"{order_id}:charge"


async def on_placed(ctx: HandlerContext, placed: m.OrderPlaced) -> None:
    await ctx.lock(placed.order_id)
    payments = qualified(ctx.schema, "payments")
    existing = await ctx.conn.fetchval(f"SELECT status FROM {payments} WHERE order_id = $1", placed.order_id)
    if existing == "voided":
        # The cancellation overtook this order (a retry lane or a dead letter delayed it):
        # never charge, but answer, so the order learns how its payment ended.
        await ctx.conn.execute(
            f"UPDATE {payments} SET status = 'declined', customer_id = $2, currency = $3, amount_minor = $4,"
            " updated_at = clock_timestamp() WHERE order_id = $1",
            placed.order_id,
            placed.customer_id,
            placed.total.currency,
            placed.total.amount_minor,
        )
        await ctx.emit(
            m.PaymentFailed(
                order_id=placed.order_id,
                customer_id=placed.customer_id,
                amount=placed.total,
                reason="order cancelled before payment",
            )
        )
        return
    if existing is not None:
        return  # already charged or declined: at most one charge per order
    amount = placed.total.amount_minor
    charged = await ctx.conn.fetchval(
        f"UPDATE {qualified(ctx.schema, 'accounts')} SET balance_minor = balance_minor - $2"
        " WHERE customer_id = $1 AND currency = $3 AND balance_minor >= $2 RETURNING balance_minor",
        placed.customer_id,
        amount,
        placed.total.currency,
    )
    if charged is not None and failpoints.enabled("payment.debit-twice"):  # a negative control's defect
        await ctx.conn.execute(
            f"UPDATE {qualified(ctx.schema, 'accounts')} SET balance_minor = balance_minor - $2"
            " WHERE customer_id = $1",
            placed.customer_id,
            amount,
        )
    if charged is None:
        known = await ctx.conn.fetchval(
            f"SELECT currency FROM {qualified(ctx.schema, 'accounts')} WHERE customer_id = $1",
            placed.customer_id,
        )
        reason = (
            "unknown customer account"
            if known is None
            else "currency mismatch"
            if known != placed.total.currency
            else "insufficient funds"
        )
        await _record(ctx.conn, ctx.schema, placed, "declined", 0, reason)
        await ctx.emit(
            m.PaymentFailed(
                order_id=placed.order_id, customer_id=placed.customer_id, amount=placed.total, reason=reason
            )
        )
        return
    await _record(ctx.conn, ctx.schema, placed, "charged", amount, None)
    lines = [StockLine(sku=i.sku, quantity=i.quantity) for i in placed.items]
    await ctx.emit(
        m.PaymentCompleted(
            order_id=placed.order_id,
            payment_id=payment_id(placed.order_id),
            customer_id=placed.customer_id,
            amount=placed.total,
            lines=lines,
        )
    )


async def _record(
    conn: DbConnection, schema: str, placed: m.OrderPlaced, status: str, charged: int, reason: str | None
) -> None:
    await conn.execute(
        f"INSERT INTO {qualified(schema, 'payments')}"
        " (order_id, payment_id, customer_id, currency, amount_minor, status, charged_minor, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        placed.order_id,
        payment_id(placed.order_id) if status == "charged" else None,
        placed.customer_id,
        placed.total.currency,
        placed.total.amount_minor,
        status,
        charged,
        reason,
    )


async def refund(ctx: HandlerContext, order_id: str, reason: str) -> None:
    """Refund a charged order once; void an order not charged yet (a charge never follows)."""
    await ctx.lock(order_id)
    payments = qualified(ctx.schema, "payments")
    row = await ctx.conn.fetchrow(
        f"SELECT status, customer_id, currency, charged_minor FROM {payments} WHERE order_id = $1 FOR UPDATE",
        order_id,
    )
    if row is None:
        await ctx.conn.execute(
            f"INSERT INTO {payments} (order_id, customer_id, currency, amount_minor, status, reason)"
            " VALUES ($1, '', '', 0, 'voided', $2)",
            order_id,
            reason,
        )
        return
    if row["status"] != "charged":
        return  # declined, voided or refunded already: at most one refund per order
    amount = row["charged_minor"]
    await ctx.conn.execute(
        f"UPDATE {payments} SET status = 'refunded', refunded_minor = charged_minor, reason = $2,"
        " updated_at = clock_timestamp() WHERE order_id = $1",
        order_id,
        reason,
    )
    await ctx.conn.execute(
        f"UPDATE {qualified(ctx.schema, 'accounts')} SET balance_minor = balance_minor + $2"
        " WHERE customer_id = $1",
        row["customer_id"],
        amount,
    )
    await ctx.emit(
        m.PaymentRefunded(
            order_id=order_id,
            payment_id=payment_id(order_id),
            amount=Money(amount_minor=amount, currency=row["currency"]),
            reason=reason,
        )
    )


async def on_stock_rejected(ctx: HandlerContext, rejected: m.StockRejected) -> None:
    await refund(ctx, rejected.order_id, f"out of stock: {rejected.reason}"[:500])


async def on_cancelling(ctx: HandlerContext, cancelling: m.OrderCancelling) -> None:
    await refund(ctx, cancelling.order_id, f"order cancelled: {cancelling.reason}")


def build_handlers(pool: asyncpg.Pool[Any]) -> Handlers:
    handlers = Handlers()
    handlers.register(m.OrderPlaced, on_placed)
    handlers.register(m.StockRejected, on_stock_rejected)
    handlers.register(m.OrderCancelling, on_cancelling)
    return handlers


def spec(config: SagaConfig) -> WorkerSpec:
    return config.worker_spec(
        "payment",
        subscribe=(config.topics.orders, config.topics.inventory),
        build_handlers=build_handlers,
        transaction_per_message=True,  # hot rows (accounts) would chain locks across a batch
    )
