"""The inventory service: reserves stock on PaymentCompleted (all lines or none), releases it
on cancellation. A CHECK keeps `available` from ever going negative.

Per batch, in the unit of work's transaction (its orders' locks already held): load the
batch's reservations and lock the stock rows they touch, in SKU order (so concurrent
batches never deadlock), in two statements; `decide` the whole batch in plain Python; save
the changed reservations and stock rows in one statement each. The rules live in `decide`,
which is pure — tests shuffle deliveries through it without a database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import asyncpg
from prometheus_client import CollectorRegistry

from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers.db import DbConnection, qualified
from sagas.config import SagaConfig
from schemas import messages as m
from schemas.values import STOCK_LINES, StockLine

ReservationStatus = Literal["reserved", "rejected", "released", "cancelled"]
Inbound = m.PaymentCompleted | m.OrderCancelling


@dataclass(frozen=True)
class Reservation:
    """A `reservations` row: what is held for an order, and how that ended."""

    order_id: str
    status: ReservationStatus
    lines: tuple[StockLine, ...] = ()


@dataclass(frozen=True)
class Stock:
    """A `stock` row's moving parts (`initial` never changes)."""

    sku: str
    available: int
    reserved: int = 0
    released: int = 0


@dataclass
class Decisions:
    """What a batch changes: reservations and stock by key (their final state), and per
    message (in order) the events it emits."""

    reservations: dict[str, Reservation] = field(default_factory=dict)
    stock: dict[str, Stock] = field(default_factory=dict)
    events: list[list[m.Message]] = field(default_factory=list)


def decide(
    reservations: dict[str, Reservation], stock: dict[str, Stock], messages: Sequence[Inbound]
) -> Decisions:
    """Apply `messages` in order to the loaded state. Each paid order is answered once
    (StockReserved with every line, or StockRejected with nothing held); a cancellation
    releases what was reserved, once, and one that comes before the payment makes sure
    nothing is ever reserved for the order. Available stock never goes below zero."""
    state, levels = dict(reservations), dict(stock)
    out = Decisions()
    for message in messages:
        if isinstance(message, m.PaymentCompleted):
            out.events.append(_reserve(state, levels, out, message))
        else:
            out.events.append(_release(state, levels, out, message.order_id))
    return out


def _reserve(
    state: dict[str, Reservation], levels: dict[str, Stock], out: Decisions, paid: m.PaymentCompleted
) -> list[m.Message]:
    existing = state.get(paid.order_id)
    if existing is not None and existing.status == "cancelled":  # the cancellation came first
        _put(state, out, Reservation(paid.order_id, "rejected"))
        return [m.StockRejected(order_id=paid.order_id, reason="order cancelled before reservation")]
    if existing is not None:
        return []  # answered already
    wanted = Counter[str]()
    for line in paid.lines:
        wanted[line.sku] += line.quantity
    missing = [
        StockLine(sku=sku, quantity=quantity - _available(levels, sku))
        for sku, quantity in sorted(wanted.items())
        if _available(levels, sku) < quantity
    ]
    if missing:
        _put(state, out, Reservation(paid.order_id, "rejected"))
        skus = ", ".join(f"{line.sku} (short {line.quantity})" for line in missing)
        return [
            m.StockRejected(order_id=paid.order_id, reason=f"not enough stock: {skus}"[:500], missing=missing)
        ]
    for sku, quantity in wanted.items():
        row = levels[sku]
        _level(
            levels, out, replace(row, available=row.available - quantity, reserved=row.reserved + quantity)
        )
    lines = tuple(sorted(paid.lines, key=lambda line: line.sku))
    _put(state, out, Reservation(paid.order_id, "reserved", lines))
    return [m.StockReserved(order_id=paid.order_id, lines=list(lines))]


def _release(
    state: dict[str, Reservation], levels: dict[str, Stock], out: Decisions, order_id: str
) -> list[m.Message]:
    existing = state.get(order_id)
    if existing is None:
        _put(state, out, Reservation(order_id, "cancelled"))  # a reservation must not follow
        return []
    if existing.status != "reserved":
        return []  # rejected, released or cancelled: nothing is held
    for line in existing.lines:
        row = levels[line.sku]  # it was reserved from this row, and stock rows are never deleted
        _level(
            levels,
            out,
            replace(row, available=row.available + line.quantity, released=row.released + line.quantity),
        )
    _put(state, out, replace(existing, status="released"))
    return [m.StockReleased(order_id=order_id, lines=list(existing.lines))]


def _available(levels: dict[str, Stock], sku: str) -> int:
    row = levels.get(sku)
    return row.available if row else 0


def _put(state: dict[str, Reservation], out: Decisions, reservation: Reservation) -> None:
    state[reservation.order_id] = out.reservations[reservation.order_id] = reservation


def _level(levels: dict[str, Stock], out: Decisions, row: Stock) -> None:
    levels[row.sku] = out.stock[row.sku] = row


# --- the batch handler: load, decide, save --------------------------------------------------


async def apply(contexts: list[HandlerContext]) -> None:
    conn, schema = contexts[0].conn, contexts[0].schema
    messages: list[Inbound] = [ctx.envelope.data for ctx in contexts]  # type: ignore[misc]
    order_ids = sorted({msg.order_id for msg in messages})
    paid_skus = sorted(
        {line.sku for msg in messages if isinstance(msg, m.PaymentCompleted) for line in msg.lines}
    )
    reservations, stock = await _load(conn, schema, order_ids, paid_skus)
    decisions = decide(reservations, stock, messages)
    _save(contexts[0], decisions)
    for ctx, events in zip(contexts, decisions.events, strict=True):
        for event in events:
            await ctx.emit(event)


async def _load(
    conn: DbConnection, schema: str, order_ids: list[str], paid_skus: list[str]
) -> tuple[dict[str, Reservation], dict[str, Stock]]:
    """The orders' reservations, and the stock rows the batch can touch (the paid lines'
    SKUs and those of reservations a cancellation may release) locked in SKU order — the
    rows are locked as the sorted scan returns them, so every batch takes them in one global
    order; the SKUs are gathered into one array first, so the lookup is an index scan
    however large the table (an OR of the two sets was a scan of every stock row). A batch
    with paid lines locks stock anyway: one round trip (the reservations
    are stable under their orders' locks, which the unit of work holds, and a stock row
    locked after a wait is read as last committed). Without, the stock is read only if a
    reservation may be released: such a batch never touches it."""
    if not paid_skus:
        known = await _load_reservations(conn, schema, order_ids)
        held = sorted({line.sku for r in known.values() if r.status == "reserved" for line in r.lines})
        return known, await _lock_stock(conn, schema, held) if held else {}
    rows = await conn.fetch(
        f"WITH r AS MATERIALIZED (SELECT order_id, status, lines FROM {qualified(schema, 'reservations')}"
        "   WHERE order_id = ANY($1::text[])),"
        f" s AS MATERIALIZED (SELECT sku, available, reserved, released FROM {qualified(schema, 'stock')}"
        "   WHERE sku = ANY(ARRAY(SELECT unnest($2::text[]) UNION SELECT line->>'sku' FROM r,"
        "   jsonb_array_elements(r.lines) AS line WHERE r.status = 'reserved')) ORDER BY sku FOR UPDATE)"
        " SELECT order_id, status, lines, NULL::text AS sku, NULL::int AS available, NULL::int AS reserved,"
        " NULL::int AS released FROM r"
        " UNION ALL SELECT NULL, NULL, NULL, sku, available, reserved, released FROM s",
        order_ids,
        paid_skus,
    )
    reservations: dict[str, Reservation] = {}
    stock: dict[str, Stock] = {}
    for row in rows:
        if row["sku"] is None:
            reservations[row["order_id"]] = _reservation(row)
        else:
            stock[row["sku"]] = Stock(row["sku"], row["available"], row["reserved"], row["released"])
    return reservations, stock


async def _load_reservations(conn: DbConnection, schema: str, order_ids: list[str]) -> dict[str, Reservation]:
    rows = await conn.fetch(
        f"SELECT order_id, status, lines FROM {qualified(schema, 'reservations')}"
        " WHERE order_id = ANY($1::text[])",
        order_ids,
    )
    return {row["order_id"]: _reservation(row) for row in rows}


async def _lock_stock(conn: DbConnection, schema: str, skus: list[str]) -> dict[str, Stock]:
    rows = await conn.fetch(
        f"SELECT sku, available, reserved, released FROM {qualified(schema, 'stock')}"
        " WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
        skus,
    )
    return {row["sku"]: Stock(**dict(row)) for row in rows}


def _reservation(row: asyncpg.Record) -> Reservation:
    lines = STOCK_LINES.validate_json(row["lines"])
    return Reservation(row["order_id"], row["status"], lines)


def _save(ctx: HandlerContext, decisions: Decisions) -> None:
    """Queue the changed rows' statements: they go with the outbox rows (HandlerContext.defer)."""
    schema = ctx.schema
    if decisions.reservations:
        rows = list(decisions.reservations.values())
        ctx.defer(
            f"INSERT INTO {qualified(schema, 'reservations')} (order_id, status, lines)"
            " SELECT r.order_id, r.status, r.lines::jsonb FROM unnest($1::text[], $2::text[], $3::text[])"
            " AS r(order_id, status, lines)"
            " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, lines = EXCLUDED.lines,"
            " updated_at = clock_timestamp()",
            [r.order_id for r in rows],
            [r.status for r in rows],
            [STOCK_LINES.dump_json(r.lines).decode() for r in rows],
        )
    if decisions.stock:
        levels = list(decisions.stock.values())
        ctx.defer(
            f"UPDATE {qualified(schema, 'stock')} AS s"
            " SET available = v.available, reserved = v.reserved, released = v.released"
            " FROM unnest($1::text[], $2::int[], $3::int[], $4::int[])"
            " AS v(sku, available, reserved, released)"
            " WHERE s.sku = v.sku",
            [s.sku for s in levels],
            [s.available for s in levels],
            [s.reserved for s in levels],
            [s.released for s in levels],
        )


def build_handlers(pool: asyncpg.Pool[Any], registry: CollectorRegistry) -> Handlers:
    handlers = Handlers()
    handlers.register_batch((m.PaymentCompleted, m.OrderCancelling), apply)
    return handlers


def spec(config: SagaConfig) -> WorkerSpec:
    return config.worker_spec(
        "inventory",
        subscribe=(config.topics.orders, config.topics.payments),
        build_handlers=build_handlers,
    )
