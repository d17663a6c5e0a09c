"""The inventory service: reserves stock on PaymentCompleted (all lines or none), releases it
on cancellation. Stock rows are locked in SKU order, so concurrent orders for the same SKUs
serialise without deadlocks, and a CHECK keeps `available` from ever going negative."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers.db import qualified
from sagas.config import SagaConfig
from schemas import messages as m
from schemas.values import StockLine


async def _reservation(ctx: HandlerContext, order_id: str) -> str | None:
    await ctx.lock(order_id)  # a row that does not exist yet cannot be locked FOR UPDATE
    status: str | None = await ctx.conn.fetchval(
        f"SELECT status FROM {qualified(ctx.schema, 'reservations')} WHERE order_id = $1 FOR UPDATE", order_id
    )
    return status


async def _set(ctx: HandlerContext, order_id: str, status: str, lines: list[StockLine]) -> None:
    await ctx.conn.execute(
        f"INSERT INTO {qualified(ctx.schema, 'reservations')} (order_id, status, lines)"
        " VALUES ($1, $2, $3::jsonb)"
        " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, lines = EXCLUDED.lines,"
        " updated_at = clock_timestamp()",
        order_id,
        status,
        json.dumps([line.model_dump() for line in lines]),
    )


async def on_payment_completed(ctx: HandlerContext, paid: m.PaymentCompleted) -> None:
    status = await _reservation(ctx, paid.order_id)
    if status == "cancelled":  # the cancellation came first: never reserve for it
        await _set(ctx, paid.order_id, "rejected", [])
        await ctx.emit(m.StockRejected(order_id=paid.order_id, reason="order cancelled before reservation"))
        return
    if status is not None:
        return  # answered already
    lines = sorted(paid.lines, key=lambda line: line.sku)
    stock = qualified(ctx.schema, "stock")
    available = {
        row["sku"]: row["available"]
        for row in await ctx.conn.fetch(
            f"SELECT sku, available FROM {stock} WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
            [line.sku for line in lines],
        )
    }
    missing = [
        StockLine(sku=line.sku, quantity=line.quantity - available.get(line.sku, 0))
        for line in lines
        if available.get(line.sku, 0) < line.quantity
    ]
    if missing:
        await _set(ctx, paid.order_id, "rejected", [])
        skus = ", ".join(f"{line.sku} (short {line.quantity})" for line in missing)
        await ctx.emit(
            m.StockRejected(order_id=paid.order_id, reason=f"not enough stock: {skus}"[:500], missing=missing)
        )
        return
    for line in lines:
        await ctx.conn.execute(
            f"UPDATE {stock} SET available = available - $2, reserved = reserved + $2 WHERE sku = $1",
            line.sku,
            line.quantity,
        )
    await _set(ctx, paid.order_id, "reserved", lines)
    await ctx.emit(m.StockReserved(order_id=paid.order_id, lines=lines))


async def on_cancelling(ctx: HandlerContext, cancelling: m.OrderCancelling) -> None:
    status = await _reservation(ctx, cancelling.order_id)
    if status is None:
        await _set(ctx, cancelling.order_id, "cancelled", [])  # a reservation must not follow
        return
    if status != "reserved":
        return  # rejected, released or cancelled: nothing is held
    raw = await ctx.conn.fetchval(
        f"SELECT lines FROM {qualified(ctx.schema, 'reservations')} WHERE order_id = $1", cancelling.order_id
    )
    lines = sorted((StockLine.model_validate(x) for x in json.loads(raw)), key=lambda line: line.sku)
    for line in lines:
        await ctx.conn.execute(
            f"UPDATE {qualified(ctx.schema, 'stock')}"
            " SET available = available + $2, released = released + $2 WHERE sku = $1",
            line.sku,
            line.quantity,
        )
    await _set(ctx, cancelling.order_id, "released", lines)
    await ctx.emit(m.StockReleased(order_id=cancelling.order_id, lines=lines))


def build_handlers(pool: asyncpg.Pool[Any]) -> Handlers:
    handlers = Handlers()
    handlers.register(m.PaymentCompleted, on_payment_completed)
    handlers.register(m.OrderCancelling, on_cancelling)
    return handlers


def spec(config: SagaConfig) -> WorkerSpec:
    return config.worker_spec(
        "inventory",
        subscribe=(config.topics.orders, config.topics.payments),
        build_handlers=build_handlers,
        transaction_per_message=True,  # hot rows (stock) would chain locks across a batch
    )
