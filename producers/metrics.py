"""Prometheus metrics of the outbox relay, registered on a registry the bootstrap passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.backlog = Gauge(
            "sagaline_outbox_backlog", "Outbox rows waiting to be published.", ["schema"], registry=registry
        )
        self.oldest_pending_age = Gauge(
            "sagaline_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none).",
            ["schema"],
            registry=registry,
        )
        self.published = Counter(
            "sagaline_outbox_published_total",
            "Outbox rows acknowledged by the broker and marked published.",
            ["schema", "topic"],
            registry=registry,
        )
        self.dispatched = Counter(
            "sagaline_outbox_dispatched_total",
            "Outbox rows the relay sent right after their commit, handed over by its process's "
            "worker (dispatch after commit; the others wait for a relay pass).",
            ["schema"],
            registry=registry,
        )
        self.parked = Gauge(
            "sagaline_outbox_parked",
            "Outbox rows the broker refuses for what they are (too large, invalid), set aside for an "
            "operator (`sagaline outbox parked`).",
            ["schema"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "sagaline_outbox_publish_failures_total",
            "Outbox sends the broker did not acknowledge (retried on the next pass).",
            ["schema"],
            registry=registry,
        )
        self.latency = Histogram(
            "sagaline_outbox_publish_latency_seconds",
            "From staging an outbox row to the broker's acknowledgement.",
            ["schema"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
