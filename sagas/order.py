"""The order service: accepts upstream requests, tracks each order's saga, enforces deadlines.

Per batch, in the unit of work's transaction: load the batch's orders (row-locked) in one
query, ask the pure state machine in `order_state` for each message in turn (`decide_batch`),
save the changed orders in one statement; the unit of work stages the events.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from consumers.errors import PermanentError
from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers import outbox
from producers.db import DbConnection, Statement, execute, qualified
from sagas.config import SagaConfig
from sagas.order_state import Order, Timeouts, decide, expire, place
from schemas import messages as m
from schemas.envelope import Envelope
from schemas.values import LINE_ITEMS

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
        items=LINE_ITEMS.validate_json(row["items"]),
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
    await save_many(conn, schema, [order])


async def save_many(conn: DbConnection, schema: str, orders: list[Order]) -> None:
    """Insert or update orders (one row each) in one statement."""
    await execute(conn, save_statement(schema, orders))


def save_statement(schema: str, orders: list[Order]) -> Statement:
    """The statement that inserts or updates `orders`; `terminal_at` is set when an order
    first reaches a terminal status."""
    return (
        f"INSERT INTO {qualified(schema, 'orders')} AS orders ({_COLUMNS}, total_minor)"
        " SELECT o.order_id, o.idempotency_key, o.request_hash, o.customer_id, o.currency, o.items::jsonb,"
        " o.status, o.payment, o.stock, o.cancel_reason, o.deadline_at, o.total_minor"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
        " $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::bigint[])"
        " AS o(order_id, idempotency_key, request_hash, customer_id, currency, items, status, payment,"
        " stock, cancel_reason, deadline_at, total_minor)"
        " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, payment = EXCLUDED.payment,"
        " stock = EXCLUDED.stock, cancel_reason = EXCLUDED.cancel_reason, deadline_at = EXCLUDED.deadline_at,"
        " updated_at = clock_timestamp(),"
        " terminal_at = CASE WHEN EXCLUDED.status NOT IN ('CONFIRMED', 'CANCELLED') THEN NULL"
        " WHEN EXCLUDED.status = orders.status THEN orders.terminal_at ELSE clock_timestamp() END",
        (
            [o.order_id for o in orders],
            [o.idempotency_key for o in orders],
            [o.request_hash for o in orders],
            [o.customer_id for o in orders],
            [o.currency for o in orders],
            [LINE_ITEMS.dump_json(o.items).decode() for o in orders],
            [o.status for o in orders],
            [o.payment for o in orders],
            [o.stock for o in orders],
            [o.cancel_reason for o in orders],
            [o.deadline_at for o in orders],
            [o.total_minor for o in orders],
        ),
    )


@dataclass
class Orders:
    """The orders a batch can see (by id and by idempotency key) and the cancellations that
    arrived before their orders; `decide_batch` updates them as it goes."""

    by_id: dict[str, Order] = field(default_factory=dict)
    by_key: dict[str, Order] = field(default_factory=dict)
    early: dict[str, str] = field(default_factory=dict)  # order id -> reason

    def put(self, order: Order) -> None:
        self.by_id[order.order_id] = self.by_key[order.idempotency_key] = order


@dataclass
class BatchDecision:
    changed: dict[str, Order] = field(default_factory=dict)
    early: dict[str, str] = field(default_factory=dict)  # cancellations to remember
    events: list[list[m.Message]] = field(default_factory=list)  # per message, in order


def decide_batch(
    orders: Orders, messages: list[m.Message], now: datetime, timeouts: Timeouts
) -> BatchDecision:
    """The order state machine over a batch, in record order: each message sees what the
    ones before it decided. Pure; raises `PermanentError` for an event about an order that
    does not exist (the unit of work then dead-letters that message alone)."""
    out = BatchDecision()
    for message in messages:
        if isinstance(message, m.PlaceOrder):
            decision = place(
                message,
                orders.by_key.get(message.idempotency_key),
                orders.by_id.get(message.order_id),
                now,
                timeouts,
                cancelled_early=message.order_id in orders.early,
            )
        else:
            order = orders.by_id.get(message.order_id)
            if order is None and isinstance(message, m.CancelOrder):
                # it overtook its PlaceOrder: remembered for when that arrives
                if message.order_id not in orders.early:
                    orders.early[message.order_id] = out.early[message.order_id] = message.reason
                out.events.append([])
                continue
            if order is None:
                # Every event about an order follows its OrderPlaced, which we emitted after storing it.
                raise PermanentError(f"{type(message).__name__} for unknown order {message.order_id!r}")
            decision = decide(order, message, now, timeouts)
        if decision.state is not None:
            orders.put(decision.state)
            out.changed[decision.state.order_id] = decision.state
        out.events.append(list(decision.events))
    return out


async def _load(conn: DbConnection, schema: str, messages: list[m.Message]) -> Orders:
    """The batch's orders, by id and by the requests' idempotency keys, row-locked in order-id
    order (the deadline scan locks rows too); and, when the batch holds requests, the early
    cancellations of their orders in the same round trip (written under their order's lock,
    which the unit of work holds: stable)."""
    ids = sorted({msg.order_id for msg in messages})
    keys = sorted({msg.idempotency_key for msg in messages if isinstance(msg, m.PlaceOrder)})
    placing = sorted({msg.order_id for msg in messages if isinstance(msg, m.PlaceOrder)})
    orders_of = (
        f"SELECT false AS early, {_COLUMNS}, NULL::text AS reason FROM {qualified(schema, 'orders')}"
        " WHERE order_id = ANY($1::text[]) OR idempotency_key = ANY($2::text[]) ORDER BY order_id FOR UPDATE"
    )
    if not placing:  # no request: no early cancellation to look for
        rows = await conn.fetch(orders_of, ids, keys)
    else:
        rows = await conn.fetch(
            f"WITH o AS MATERIALIZED ({orders_of}) SELECT * FROM o UNION ALL"
            " SELECT true, order_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, reason"
            f" FROM {qualified(schema, 'early_cancellations')} WHERE order_id = ANY($3::text[])",
            ids,
            keys,
            placing,
        )
    orders = Orders()
    early: dict[str, str] = {}
    for row in rows:
        if row["early"]:
            early[row["order_id"]] = row["reason"]
        else:
            orders.put(_from_row(row))
    orders.early = {order_id: reason for order_id, reason in early.items() if order_id not in orders.by_id}
    return orders


def key_lock(message: m.Message) -> tuple[str, ...]:
    """What a message locks besides its order: a request, its idempotency key (two orders
    placed with one key are told apart under it)."""
    return (f"key:{message.idempotency_key}",) if isinstance(message, m.PlaceOrder) else ()


def build_handlers(config: SagaConfig) -> Any:
    timeouts = Timeouts(
        timedelta(seconds=config.payment_timeout_s), timedelta(seconds=config.stock_timeout_s)
    )

    async def apply(contexts: list[HandlerContext]) -> None:
        """Load, decide, save: a batch of requests and events in a constant number of
        statements. Requests that share an idempotency key are serialised by a lock on the key,
        which the unit of work takes with each order id's (`key_lock`): this call then costs
        nothing."""
        conn, schema = contexts[0].conn, contexts[0].schema
        messages = [ctx.envelope.data for ctx in contexts]
        await contexts[0].lock(*(key for msg in messages for key in key_lock(msg)))
        decided = decide_batch(await _load(conn, schema, messages), messages, datetime.now(UTC), timeouts)
        # the writes go with the outbox rows, in one round trip (HandlerContext.defer)
        if decided.changed:
            sql, args = save_statement(schema, list(decided.changed.values()))
            contexts[0].defer(sql, *args)
        if decided.early:
            contexts[0].defer(
                f"INSERT INTO {qualified(schema, 'early_cancellations')} (order_id, reason)"
                " SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (order_id) DO NOTHING",
                list(decided.early),
                list(decided.early.values()),
            )
        for ctx, events in zip(contexts, decided.events, strict=True):
            for event in events:
                await ctx.emit(event)

    def build(pool: asyncpg.Pool[Any], registry: CollectorRegistry) -> Handlers:
        handlers = Handlers()
        handlers.register_batch(
            (
                m.PlaceOrder,
                m.CancelOrder,
                m.PaymentCompleted,
                m.PaymentFailed,
                m.PaymentRefunded,
                m.StockReserved,
                m.StockRejected,
                m.StockReleased,
            ),
            apply,
            locks=key_lock,
        )
        return handlers

    return build


def deadline_loop(config: SagaConfig) -> Any:
    """Cancel orders whose step deadline passed; each in its own transaction with the order
    row locked (SKIP LOCKED: a handler working on it wins, the next scan sees its result).
    A database outage ends the scan with its error; the service's supervisor restarts it."""

    async def run(pool: asyncpg.Pool[Any], stop: asyncio.Event, registry: CollectorRegistry) -> None:
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
