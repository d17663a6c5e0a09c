"""The saga tracker: a projection of every saga topic into one timeline per order.

The order service is the authority on an order's status, and its events arrive in order
(one key, one partition), so they set the status; the other services' events only move
the current step. A timeline row per event id makes redelivery harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from producers.db import DbConnection, qualified
from sagas.config import SagaConfig
from schemas import messages as m

TERMINAL_STATUSES = ("CONFIRMED", "CANCELLED", "REJECTED")
STATUS_ORDER = (
    "REQUESTED",
    "PENDING_PAYMENT",
    "AWAITING_STOCK",
    "CONFIRMED",
    "CANCELLING",
    "CANCELLED",
    "REJECTED",
)

# message type -> (status it sets, or None to keep; the step the saga is at afterwards)
TRANSITIONS: dict[type[m.Message], tuple[str | None, str]] = {
    m.PlaceOrder: (None, "order: accepting"),
    m.CancelOrder: (None, "order: cancellation requested"),
    m.OrderPlaced: ("PENDING_PAYMENT", "payment: charging"),
    m.OrderRejected: ("REJECTED", "done"),
    m.PaymentCompleted: (None, "inventory: reserving"),
    m.PaymentFailed: (None, "order: cancelling"),
    m.StockReserved: (None, "order: confirming"),
    m.StockRejected: (None, "payment: refunding"),
    m.OrderConfirmed: ("CONFIRMED", "done"),
    m.OrderCancelling: ("CANCELLING", "compensating: refund and release"),
    m.PaymentRefunded: (None, "compensating: refunded"),
    m.StockReleased: (None, "compensating: stock released"),
    m.OrderCancelled: ("CANCELLED", "done"),
}


def summary(message: m.Message) -> str:
    return message.model_dump_json(exclude={"order_id"})[:300]


async def record(ctx: HandlerContext, message: m.Message) -> None:
    envelope = ctx.envelope
    timeline, sagas = qualified(ctx.schema, "timeline"), qualified(ctx.schema, "sagas")
    status, step = TRANSITIONS[type(message)]
    if isinstance(message, m.PaymentCompleted):
        status = "AWAITING_STOCK"
    # Events of different topics arrive in any order: a status only ever moves forward. A
    # rejection ends only a saga that never started: an OrderRejected for a request that
    # reused an existing order's id is about that request, not about the order.
    rank = f"array_position(ARRAY{list(STATUS_ORDER)}::text[], {{}})"
    applies = (
        f"({rank.format('$3')} > {rank.format('s.status')} AND ($3 <> 'REJECTED' OR s.status = 'REQUESTED'))"
    )
    # one round trip: the timeline row (a redelivered event id adds nothing) and the projection
    await ctx.conn.execute(
        f"WITH event AS (INSERT INTO {timeline}"
        " (event_id, order_id, saga_id, type, source, topic, occurred_at, summary)"
        " VALUES ($8, $1, $2, $7, $9, $10, $6, $11) ON CONFLICT (event_id) DO NOTHING)"
        f" INSERT INTO {sagas} AS s"
        " (order_id, saga_id, status, step, reason, started_at, updated_at, last_event)"
        " VALUES ($1, $2, COALESCE($3, 'REQUESTED'), $4, $5, $6, $6, $7)"
        " ON CONFLICT (order_id) DO UPDATE SET"
        f"  status = CASE WHEN {applies} THEN $3 ELSE s.status END,"
        f"  step = CASE WHEN {applies} OR (s.status <> ALL(ARRAY{list(TERMINAL_STATUSES)}::text[])"
        "              AND COALESCE($3, '') <> 'REJECTED') THEN $4 ELSE s.step END,"
        f"  reason = CASE WHEN $3 = 'REJECTED' AND NOT {applies} THEN s.reason"
        "               ELSE COALESCE($5, s.reason) END,"
        "  started_at = LEAST(s.started_at, $6),"
        "  updated_at = GREATEST(s.updated_at, $6),"
        "  last_event = $7",
        message.order_id,
        envelope.saga_id,
        status,
        step,
        getattr(message, "reason", None),
        envelope.time,
        type(message).__name__,
        envelope.id,
        envelope.source,
        ctx.topics.topic_for(type(message)),
        summary(message),
    )


def build_handlers(pool: asyncpg.Pool[Any]) -> Handlers:
    handlers = Handlers()
    for message_type in TRANSITIONS:
        handlers.register(message_type, record)
    return handlers


def spec(config: SagaConfig) -> WorkerSpec:
    topics = config.topics
    return config.worker_spec(
        "tracker",
        subscribe=(topics.ingress, topics.orders, topics.payments, topics.inventory),
        build_handlers=build_handlers,
        run_relay=False,
    )


# --- queries for `sagaline saga show|list` ------------------------------------------------


@dataclass(frozen=True)
class SagaRow:
    order_id: str
    saga_id: str
    status: str
    step: str
    reason: str | None
    started_at: datetime
    updated_at: datetime
    last_event: str


async def show(conn: DbConnection, schema: str, order_id: str) -> tuple[SagaRow | None, list[dict[str, Any]]]:
    row = await conn.fetchrow(f"SELECT * FROM {qualified(schema, 'sagas')} WHERE order_id = $1", order_id)
    events = await conn.fetch(
        f"SELECT occurred_at, source, type, topic, event_id, summary FROM {qualified(schema, 'timeline')}"
        " WHERE order_id = $1 ORDER BY occurred_at, recorded_at",
        order_id,
    )
    return (SagaRow(**dict(row)) if row else None), [dict(e) for e in events]


async def list_sagas(
    conn: DbConnection,
    schema: str,
    *,
    statuses: list[str],
    stuck_for: timedelta | None,
    limit: int,
) -> list[SagaRow]:
    clauses: list[str] = []
    args: list[Any] = []
    if statuses:
        args.append(statuses)
        clauses.append(f"status = ANY(${len(args)}::text[])")
    if stuck_for is not None:
        args.append(stuck_for)
        clauses.append(
            f"status <> ALL('{{{','.join(TERMINAL_STATUSES)}}}') AND updated_at < now() - ${len(args)}"
        )
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT * FROM {qualified(schema, 'sagas')} {where} ORDER BY updated_at LIMIT ${len(args)}", *args
    )
    return [SagaRow(**dict(r)) for r in rows]
