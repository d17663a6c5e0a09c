"""Prometheus metrics of a consumer worker (RED + retries, dead letters, duplicates, lag)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.processed = Counter(
            "sagaline_consumer_processed_total",
            "Records handled, by outcome: applied, duplicate, ignored, retry, dead_letter.",
            ["group", "topic", "outcome"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "sagaline_consumer_batch_duration_seconds",
            "Time to apply one poll's records as one unit of work: database commit and lane sends included.",
            ["group"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.retried = Counter(
            "sagaline_consumer_retried_total",
            "Records sent to a delayed retry topic.",
            ["group", "lane"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "sagaline_consumer_dead_lettered_total",
            "Records sent to the dead-letter topic.",
            ["group", "failure_class"],
            registry=registry,
        )
        self.duplicates = Counter(
            "sagaline_consumer_duplicates_skipped_total",
            "Redelivered records the inbox recognised and skipped.",
            ["group"],
            registry=registry,
        )
        self.lag = Gauge(
            "sagaline_consumer_lag",
            "High watermark minus the next offset to process.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "sagaline_consumer_in_flight", "Records being processed now.", ["group"], registry=registry
        )
        self.lingering = Gauge(
            "sagaline_consumer_lingering",
            "1 while the group's fetches wait for records to pile up (SAGALINE_WORKER_LINGER_MS), else 0.",
            ["group"],
            registry=registry,
        )
        self.fetch_min_bytes = Gauge(
            "sagaline_consumer_fetch_min_bytes",
            "What the group's fetches ask the broker to gather before they return: 1 reacts to "
            "every record; while lingering 256 KiB, or with CPU to spare a share of what the "
            "linger is expected to gather (docs/consumers.md).",
            ["group"],
            registry=registry,
        )
