"""Dead letters as metrics, read from the DLQ index (the indexer process exposes them):
`sagaline_dlq_entries{group, failure_class, status}`, refreshed every few seconds, and
`sagaline_dlq_oldest_new_age_seconds`.

Every label value comes from a closed set: a dead letter's group and failure class are
headers of a record on a topic (anything with write access could forge them), so values
outside the deployment's groups and the known classes and statuses count as `other`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Gauge

from dlq.store import STATUSES
from producers.db import qualified

log = logging.getLogger(__name__)

FAILURE_CLASSES = ("transient", "permanent")
REFRESH_S = 5.0


class DeadLetterGauges:
    def __init__(self, registry: CollectorRegistry, groups: Iterable[str]) -> None:
        self.groups = tuple(groups)
        self.entries = Gauge(
            "sagaline_dlq_entries",
            "Dead letters in the DLQ index, by consumer group, failure class and status "
            "(new: waiting for an operator).",
            ["group", "failure_class", "status"],
            registry=registry,
        )
        self.oldest_new = Gauge(
            "sagaline_dlq_oldest_new_age_seconds",
            "Age of the oldest dead letter still `new` (0 when none is).",
            registry=registry,
        )
        # zeros, so a rate or an alert sees the series before the first dead letter
        self._seen = {(group, klass, "new") for group in self.groups for klass in FAILURE_CLASSES}
        for labels in self._seen:
            self.entries.labels(*labels)

    async def refresh(self, pool: asyncpg.Pool[Any], schema: str) -> None:
        rows = await pool.fetch(
            "SELECT consumer_group, failure_class, status, count(*) AS n,"
            " extract(epoch FROM now() - min(indexed_at) FILTER (WHERE status = 'new')) AS oldest_new"
            f" FROM {qualified(schema, 'dead_letters')} GROUP BY 1, 2, 3"
        )
        counts: dict[tuple[str, str, str], int] = {}
        for row in rows:
            labels = (
                row["consumer_group"] if row["consumer_group"] in self.groups else "other",
                row["failure_class"] if row["failure_class"] in FAILURE_CLASSES else "other",
                row["status"] if row["status"] in STATUSES else "other",
            )
            counts[labels] = counts.get(labels, 0) + row["n"]
        self._seen |= set(counts)
        for labels in self._seen:  # a combination gone from the index reads 0, not its last count
            self.entries.labels(*labels).set(counts.get(labels, 0))
        ages = [float(row["oldest_new"]) for row in rows if row["oldest_new"] is not None]
        self.oldest_new.set(max(ages, default=0.0))


def gauge_loop(
    pool: asyncpg.Pool[Any], schema: str, registry: CollectorRegistry, groups: Iterable[str]
) -> Any:
    """Refresh the dead-letter gauges until `stop`; a failed refresh is logged and tried again
    (the gauges keep their last values)."""
    gauges = DeadLetterGauges(registry, groups)

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await gauges.refresh(pool, schema)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("dead-letter gauges not refreshed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=REFRESH_S)

    return run
