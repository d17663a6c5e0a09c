"""The saga's own metrics, exposed by the tracker (it sees every saga event).

Observed when a saga ends, once the tracker's transaction that ended it commits (a
redelivered event is a duplicate and counts nothing), labelled only with bounded values —
never an order or saga id:

- `sagaline_saga_completed_total{status, reason}`: sagas that reached a terminal status;
  `reason` is one of the cancellation reasons, `rejected`, `none` or `other`
- `sagaline_saga_duration_seconds{status}`: first event to the terminal one, with the
  terminal event's trace id as an exemplar (OpenMetrics exposition)
- `sagaline_saga_step_duration_seconds{step}`: for each event of the saga's timeline after
  the first, the time since the event before it; `step` is the event's type (placed → paid
  is `step="PaymentCompleted"`)

and refreshed from the tracker's table every few seconds:

- `sagaline_sagas_open{step}`: sagas not yet terminal, by the step they are at
- `sagaline_sagas_stuck`: open sagas unchanged for longer than `SAGALINE_SAGA_STUCK_AFTER_S`
- `sagaline_sagas_oldest_open_age_seconds`
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from producers.db import qualified

log = logging.getLogger(__name__)

SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)
CANCEL_REASONS = frozenset({"payment_declined", "out_of_stock", "customer_request", "deadline_expired"})
OPEN_STEPS_REFRESH_S = 5.0


def reason_label(status: str, reason: str | None) -> str:
    """A bounded label for why a saga ended: free-text rejection reasons collapse to one."""
    if status == "REJECTED":
        return "rejected"
    if reason in CANCEL_REASONS:
        return str(reason)
    return "none" if status == "CONFIRMED" else "other"


class SagaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.completed = Counter(
            "sagaline_saga_completed_total",
            "Sagas that reached a terminal status (CONFIRMED, CANCELLED, REJECTED), by why.",
            ["status", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "sagaline_saga_duration_seconds",
            "From a saga's first event to its terminal one, by terminal status.",
            ["status"],
            buckets=SAGA_BUCKETS,
            registry=registry,
        )
        self.step_duration = Histogram(
            "sagaline_saga_step_duration_seconds",
            "From a saga's previous event to this one, by this event's type (observed when the saga ends).",
            ["step"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )

    def ended(self, status: str, reason: str | None, seconds: float, trace_id: str | None) -> None:
        self.completed.labels(status, reason_label(status, reason)).inc()
        exemplar = {"trace_id": trace_id} if trace_id else None
        self.duration.labels(status).observe(max(seconds, 0.0), exemplar)

    def stepped(self, step: str, seconds: float) -> None:
        self.step_duration.labels(step).observe(max(seconds, 0.0))


def open_sagas_sql(schema: str, is_open: str) -> str:
    """The gauges' query: open sagas by step, how many are stuck (unchanged for $1 seconds)
    and the age of the oldest."""
    return (
        "SELECT step, count(*) AS n,"
        " count(*) FILTER (WHERE updated_at < now() - make_interval(secs => $1)) AS stuck,"
        " extract(epoch FROM now() - min(started_at)) AS oldest"
        f" FROM {qualified(schema, 'sagas')} WHERE {is_open} GROUP BY step"
    )


class OpenSagaGauges:
    def __init__(self, registry: CollectorRegistry, steps: tuple[str, ...]) -> None:
        self.steps = steps
        self.open = Gauge(
            "sagaline_sagas_open",
            "Sagas not yet terminal, by the step they are at.",
            ["step"],
            registry=registry,
        )
        self.stuck = Gauge(
            "sagaline_sagas_stuck",
            "Open sagas unchanged for longer than SAGALINE_SAGA_STUCK_AFTER_S.",
            registry=registry,
        )
        self.oldest = Gauge(
            "sagaline_sagas_oldest_open_age_seconds",
            "Age of the oldest open saga (0 when none is open).",
            registry=registry,
        )
        for step in steps:
            self.open.labels(step)

    async def refresh(self, pool: asyncpg.Pool[Any], schema: str, is_open: str, stuck_after_s: float) -> None:
        """One query over the open sagas, which `is_open` (an SQL condition on the row) picks
        out through the (status, updated_at) index: its cost follows the open sagas, not
        all the sagas ever tracked."""
        rows = await pool.fetch(open_sagas_sql(schema, is_open), stuck_after_s)
        seen = {row["step"]: row for row in rows}
        for step in {*self.steps, *seen}:
            self.open.labels(step).set(seen[step]["n"] if step in seen else 0)
        self.stuck.set(sum(row["stuck"] for row in rows))
        self.oldest.set(max((float(row["oldest"]) for row in rows), default=0.0))


def gauge_loop(schema: str, steps: tuple[str, ...], is_open: str, stuck_after_s: float) -> Any:
    """A background task for the tracker: refresh the open-saga gauges until stop. A failed
    refresh is logged and tried again next time (the gauges keep their last values).
    `is_open`: the SQL condition that a saga row is open (`sagas.tracker.open_status_sql`)."""

    made: dict[int, OpenSagaGauges] = {}  # a restarted loop reuses its registry's gauges

    async def run(pool: asyncpg.Pool[Any], stop: asyncio.Event, registry: CollectorRegistry) -> None:
        if id(registry) not in made:
            made[id(registry)] = OpenSagaGauges(registry, steps)
        gauges = made[id(registry)]
        while not stop.is_set():
            try:
                await gauges.refresh(pool, schema, is_open, stuck_after_s)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("open-saga gauges not refreshed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=OPEN_STEPS_REFRESH_S)

    return run
