"""The saga tracker: a projection of every saga topic into one timeline per order.

The order service is the authority on an order's status, and its events arrive in order
(one key, one partition), so they set the status; the other services' events only move
the current step. A timeline row per event id makes redelivery harmless: the timeline is
the tracker's inbox (`TimelineInbox`).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from consumers.handlers import HandlerContext, Handlers, lock_keys_sql
from consumers.inbox import Delivered
from consumers.spec import WorkerSpec
from producers.db import DbConnection, qualified
from sagas.config import SagaConfig
from sagas.metrics import SagaMetrics, gauge_loop
from schemas import messages as m
from schemas.envelope import Envelope
from schemas.topics import TopicMap

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
# the statuses of a saga still running; its reads name these, never "not terminal" (below)
OPEN_STATUSES = tuple(status for status in STATUS_ORDER if status not in TERMINAL_STATUSES)


def open_status_sql() -> str:
    """The SQL condition "the saga is open", spelled as the open statuses themselves.
    PostgreSQL estimates `status IN (open...)` from the column's most common values: a few
    rows when most sagas have ended. It estimates `status NOT IN (terminal...)` by
    multiplying the selectivities of the `<>`s, as if they were independent (a sixth of the
    table when four sagas in five are confirmed and one cancelled), and plans a parallel
    scan of the history for a handful of open sagas."""
    quoted = ", ".join(f"'{status}'" for status in OPEN_STATUSES)  # constants of this module
    return f"status IN ({quoted})"


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


OPEN_STEPS = tuple(sorted({step for _, step in TRANSITIONS.values()} - {"done"}))


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


def summary(message: m.Message) -> str:
    return message.model_dump_json(exclude={"order_id"})[:300]


def fold(row: SagaRow | None, envelope: Envelope[m.Message]) -> SagaRow:
    """The saga after one more event. Events of different topics arrive in any order: a
    status only ever moves forward. A rejection ends only a saga that never started: an
    OrderRejected for a request that reused an existing order's id is about that request, not
    about the order. The step, the reason and the last event follow the latest event by its
    time (not by arrival) until the saga is terminal; an ended saga's reason is final."""
    message = envelope.data
    status, step = TRANSITIONS[type(message)]
    if isinstance(message, m.PaymentCompleted):
        status = "AWAITING_STOCK"
    reason: str | None = vars(message).get("reason")  # not getattr: pydantic raises (slowly) for a miss
    at, last = envelope.time, type(message).__name__
    if row is None:
        return SagaRow(message.order_id, envelope.saga_id, status or "REQUESTED", step, reason, at, at, last)
    applies = (
        status is not None
        and STATUS_ORDER.index(status) > STATUS_ORDER.index(row.status)
        and (status != "REJECTED" or row.status == "REQUESTED")
    )
    latest = at >= row.updated_at  # events of different topics may arrive out of time order
    open_before = row.status not in TERMINAL_STATUSES
    ends = applies and status in TERMINAL_STATUSES
    moves = ends or (open_before and status != "REJECTED" and latest)
    if applies:  # a status change brings its reason, if it has one
        new_reason = reason if reason is not None else row.reason
    elif open_before and status != "REJECTED" and latest and reason is not None:
        new_reason = reason  # an open saga shows its latest event's reason
    else:
        new_reason = row.reason  # an ended saga's reason is final
    return SagaRow(
        row.order_id,
        row.saga_id,
        status if applies and status else row.status,
        step if moves else row.step,
        new_reason,
        min(row.started_at, at),
        max(row.updated_at, at),
        last if latest else row.last_event,
    )


_SAGA_FIELDS = tuple(field.name for field in fields(SagaRow))
_SAGA_COLUMNS = ", ".join(_SAGA_FIELDS)  # the table's columns are the row's fields, in order
_SAGA_GETTERS = tuple(map(operator.attrgetter, _SAGA_FIELDS))


class TimelineInbox:
    """The tracker's inbox is its timeline (consumers.inbox.Inbox): the row an event adds
    there is the claim — a redelivered event id adds nothing and is skipped — so an event
    costs the tracker one row, not an inbox row and a timeline row."""

    def __init__(self, schema: str, topics: TopicMap) -> None:
        self.schema = schema
        self.topics = topics

    async def claim(
        self, conn: DbConnection, events: Sequence[Delivered], *, lock: Collection[str] = ()
    ) -> set[str]:
        values = [self._row(envelope) for envelope, _ in events]
        columns = [list(column) for column in zip(*values, strict=True)] if values else [[]] * 8
        first = f" WHERE ({lock_keys_sql('$9::text', '$10')}) IS NOT NULL" if lock else ""
        rows = await conn.fetch(
            f"INSERT INTO {qualified(self.schema, 'timeline')}"
            " (event_id, order_id, saga_id, type, source, topic, occurred_at, summary)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
            f" $7::timestamptz[], $8::text[]){first} ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            *columns,
            *((self.schema, sorted(set(lock))) if lock else ()),
        )
        return {row["event_id"] for row in rows}

    def _row(self, envelope: Envelope[m.Message]) -> tuple[Any, ...]:
        message = envelope.data
        cls = type(message)
        return (
            envelope.id,
            message.order_id,
            envelope.saga_id,
            cls.__name__,
            envelope.source,
            self.topics.topic_for(cls),
            envelope.time,
            summary(message),
        )


async def record(contexts: list[HandlerContext], metrics: SagaMetrics | None = None) -> None:
    """A batch of events new to the timeline (`TimelineInbox` claimed them) in two
    statements: loading the sagas it touches; then the folded sagas, saved at once. With
    `metrics`, a saga that ends in the batch is observed once the batch commits: its outcome,
    its duration and the duration of each of its steps, from its whole timeline (one more
    statement, only for a batch in which sagas end), so events that reached the tracker out
    of order still give every step exactly once."""
    conn, schema = contexts[0].conn, contexts[0].schema
    envelopes = [ctx.envelope for ctx in contexts]
    timeline, sagas = qualified(schema, "timeline"), qualified(schema, "sagas")
    rows = await conn.fetch(
        f"SELECT {_SAGA_COLUMNS} FROM {sagas} WHERE order_id = ANY($1::text[])",
        sorted({e.data.order_id for e in envelopes}),
    )
    state: dict[str, SagaRow] = {row["order_id"]: SagaRow(*row) for row in rows}  # columns in field order
    changed: dict[str, SagaRow] = {}
    ended: dict[str, HandlerContext] = {}  # order id -> the context of the event that ended it
    for ctx, envelope in zip(contexts, envelopes, strict=True):
        order_id = envelope.data.order_id
        before = state.get(order_id)
        state[order_id] = changed[order_id] = after = fold(before, envelope)
        if (before is None or before.status not in TERMINAL_STATUSES) and after.status in TERMINAL_STATUSES:
            ended[order_id] = ctx
    saved = list(changed.values())
    await conn.execute(
        f"INSERT INTO {sagas} ({_SAGA_COLUMNS})"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::timestamptz[], $7::timestamptz[], $8::text[])"
        " ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, step = EXCLUDED.step,"
        " reason = EXCLUDED.reason, started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at,"
        " last_event = EXCLUDED.last_event",
        *([getter(row) for row in saved] for getter in _SAGA_GETTERS),
    )
    if metrics is not None and ended:
        steps = await conn.fetch(
            f"SELECT order_id, type, occurred_at FROM {timeline}"
            " WHERE order_id = ANY($1::text[]) ORDER BY order_id, occurred_at, event_id",
            sorted(ended),
        )
        timelines: dict[str, list[tuple[str, datetime]]] = {}
        for row in steps:
            timelines.setdefault(row["order_id"], []).append((row["type"], row["occurred_at"]))
        for order_id, ctx in ended.items():
            ctx.after_commit.append(_observe(metrics, state[order_id], timelines.get(order_id, []), ctx))


def _observe(
    metrics: SagaMetrics, saga: SagaRow, timeline: list[tuple[str, datetime]], ended_by: HandlerContext
) -> Callable[[], None]:
    """A saga that ended, as metrics (run after the commit): its outcome and duration (with
    the trace id of the event that ended it) and every step of its timeline."""
    traceparent = (ended_by.trace[0] if ended_by.trace else None) or ended_by.envelope.traceparent
    trace_id = traceparent.split("-")[1] if traceparent and traceparent.count("-") == 3 else None

    def observe() -> None:
        metrics.ended(saga.status, saga.reason, (saga.updated_at - saga.started_at).total_seconds(), trace_id)
        for (_, previous), (step, at) in itertools.pairwise(timeline):
            metrics.stepped(step, (at - previous).total_seconds())

    return observe


def build_handlers(pool: asyncpg.Pool[Any], registry: CollectorRegistry) -> Handlers:
    handlers = Handlers()
    handlers.register_batch(TRANSITIONS, functools.partial(record, metrics=SagaMetrics(registry)))
    return handlers


def spec(config: SagaConfig) -> WorkerSpec:
    topics = config.topics
    return config.worker_spec(
        "tracker",
        subscribe=(topics.ingress, topics.orders, topics.payments, topics.inventory),
        build_handlers=build_handlers,
        run_relay=False,
        batch_wait_ms=config.tracker_batch_wait_ms,
        inbox=TimelineInbox(config.schema("tracker"), topics),
        background=(
            gauge_loop(config.schema("tracker"), OPEN_STEPS, open_status_sql(), config.stuck_after_s),
        ),
    )


# --- queries for `sagaline saga show|list` ------------------------------------------------


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
        clauses.append(f"{open_status_sql()} AND updated_at < now() - ${len(args)}::interval")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT * FROM {qualified(schema, 'sagas')} {where} ORDER BY updated_at LIMIT ${len(args)}", *args
    )
    return [SagaRow(**dict(r)) for r in rows]
