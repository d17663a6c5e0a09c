"""The order service: accepts upstream requests, tracks each order's saga, enforces deadlines.

Loads the order row (locked), asks the pure state machine in `order_state`, stores the new
state and stages the events — all in the unit of work's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from consumers.errors import PermanentError
from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers import outbox
from producers.db import DbConnection, qualified
from sagas.config import SagaConfig
from sagas.order_state import Decision, Order, Timeouts, decide, expire, place
from schemas import messages as m
from schemas.envelope import Envelope
from schemas.values import LineItem

_COLUMNS = (
    "order_id, idempotency_key, request_hash, customer_id, currency, items, status, payment, stock,"
    " cancel_reason, deadline_at"
)


def _from_row(row: asyncpg.Record) -> Order:
    return Order(
        order_id=row["order_id"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        customer_id=row["customer_id"],
        currency=row["currency"],
        items=tuple(LineItem.model_validate(i) for i in json.loads(row["items"])),
        status=row["status"],
        payment=row["payment"],
        stock=row["stock"],
        cancel_reason=row["cancel_reason"],
        deadline_at=row["deadline_at"],
    )


async def load(conn: DbConnection, schema: str, order_id: str, *, lock: bool = True) -> Order | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {qualified(schema, 'orders')} WHERE order_id = $1"
        + (" FOR UPDATE" if lock else ""),
        order_id,
    )
    return _from_row(row) if row else None


async def save(conn: DbConnection, schema: str, order: Order) -> None:
    await conn.execute(
        f"INSERT INTO {qualified(schema, 'orders')} AS orders ({_COLUMNS}, total_minor) VALUES"
        " ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, payment = EXCLUDED.payment,"
        " stock = EXCLUDED.stock, cancel_reason = EXCLUDED.cancel_reason, deadline_at = EXCLUDED.deadline_at,"
        " updated_at = clock_timestamp(),"
        " terminal_at = CASE WHEN EXCLUDED.status NOT IN ('CONFIRMED', 'CANCELLED') THEN NULL"
        " WHEN EXCLUDED.status = orders.status THEN orders.terminal_at ELSE clock_timestamp() END",
        order.order_id,
        order.idempotency_key,
        order.request_hash,
        order.customer_id,
        order.currency,
        json.dumps([i.model_dump() for i in order.items]),
        order.status,
        order.payment,
        order.stock,
        order.cancel_reason,
        order.deadline_at,
        order.total.amount_minor,
    )


async def _apply(ctx: HandlerContext, decision: Decision) -> None:
    if decision.state is not None:
        await save(ctx.conn, ctx.schema, decision.state)
    for event in decision.events:
        await ctx.emit(event)


def build_handlers(config: SagaConfig) -> Any:
    timeouts = Timeouts(
        timedelta(seconds=config.payment_timeout_s), timedelta(seconds=config.stock_timeout_s)
    )

    def build(pool: asyncpg.Pool[Any]) -> Handlers:
        handlers = Handlers()

        @handlers.on(m.PlaceOrder)
        async def on_place(ctx: HandlerContext, command: m.PlaceOrder) -> None:
            table = qualified(ctx.schema, "orders")
            # Serialise requests that share a key or an id (one transaction wins, the other sees it).
            await ctx.lock(f"key:{command.idempotency_key}")
            await ctx.lock(command.order_id)
            key_row = await ctx.conn.fetchrow(
                f"SELECT {_COLUMNS} FROM {table} WHERE idempotency_key = $1", command.idempotency_key
            )
            by_id = await load(ctx.conn, ctx.schema, command.order_id)
            early = await ctx.conn.fetchval(
                f"SELECT true FROM {qualified(ctx.schema, 'early_cancellations')} WHERE order_id = $1",
                command.order_id,
            )
            decision = place(
                command,
                _from_row(key_row) if key_row else None,
                by_id,
                datetime.now(UTC),
                timeouts,
                cancelled_early=bool(early),
            )
            await _apply(ctx, decision)

        @handlers.on(m.CancelOrder)
        async def on_cancel(ctx: HandlerContext, command: m.CancelOrder) -> None:
            await ctx.lock(command.order_id)  # the same lock PlaceOrder takes: one sees the other
            order = await load(ctx.conn, ctx.schema, command.order_id)
            if order is None:  # it overtook its PlaceOrder: remembered for when that arrives
                await ctx.conn.execute(
                    f"INSERT INTO {qualified(ctx.schema, 'early_cancellations')} (order_id, reason)"
                    " VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
                    command.order_id,
                    command.reason,
                )
                return
            await _apply(ctx, decide(order, command, datetime.now(UTC), timeouts))

        async def on_event(ctx: HandlerContext, message: m.Message) -> None:
            order = await load(ctx.conn, ctx.schema, message.order_id)
            if order is None:
                # Every event about an order follows its OrderPlaced, which we emitted after storing it.
                raise PermanentError(f"{type(message).__name__} for unknown order {message.order_id!r}")
            await _apply(ctx, decide(order, message, datetime.now(UTC), timeouts))

        for message_type in (
            m.PaymentCompleted,
            m.PaymentFailed,
            m.PaymentRefunded,
            m.StockReserved,
            m.StockRejected,
            m.StockReleased,
        ):
            handlers.register(message_type, on_event)
        return handlers

    return build


def deadline_loop(config: SagaConfig) -> Any:
    """Cancel orders whose step deadline passed; each in its own transaction with the order
    row locked (SKIP LOCKED: a handler working on it wins, the next scan sees its result).
    A database outage ends the scan with its error; the service's supervisor restarts it."""

    async def run(pool: asyncpg.Pool[Any], stop: asyncio.Event) -> None:
        schema = config.schema("order")
        table = qualified(schema, "orders")
        while not stop.is_set():
            await _expire_due(pool, schema, table, config)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=config.deadline_scan_interval_s)

    return run


async def _expire_due(pool: asyncpg.Pool[Any], schema: str, table: str, config: SagaConfig) -> None:
    now = datetime.now(UTC)
    due = await pool.fetch(
        f"SELECT order_id FROM {table}"
        " WHERE deadline_at < $1 AND status IN ('PENDING_PAYMENT', 'AWAITING_STOCK')"
        " ORDER BY deadline_at LIMIT 500",
        now,
    )
    for row in due:
        async with pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM {table} WHERE order_id = $1 FOR UPDATE SKIP LOCKED", row["order_id"]
            )
            if locked is None:
                continue
            decision = expire(_from_row(locked), datetime.now(UTC))
            if decision.state is not None:
                await save(conn, schema, decision.state)
            for event in decision.events:
                envelope: Envelope[m.Message] = Envelope.new(event, config.source("order"))
                await outbox.stage(conn, schema, envelope, config.topics)


def spec(config: SagaConfig) -> WorkerSpec:
    return config.worker_spec(
        "order",
        subscribe=(config.topics.ingress, config.topics.payments, config.topics.inventory),
        build_handlers=build_handlers(config),
        background=(deadline_loop(config),),
    )
