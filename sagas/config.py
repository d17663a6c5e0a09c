"""How one deployment of the saga is named and timed. Built by the bootstrap from settings;
a prefix gives tests (or tenants) their own schemas, groups and topics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumers.lanes import Lanes
from consumers.spec import BuildHandlers, WorkerSpec
from producers import migrate
from producers.db import DbConnection
from schemas.topics import TopicMap, TopicSpec

SERVICES = ("order", "payment", "inventory", "tracker")


@dataclass(frozen=True)
class SagaConfig:
    topics: TopicMap = field(default_factory=TopicMap)
    prefix: str = ""
    """Prepended to schema and group names (lowercase letters, digits, underscores)."""
    payment_timeout_s: float = 30.0
    stock_timeout_s: float = 30.0
    deadline_scan_interval_s: float = 0.5
    retry_delays_s: tuple[float, ...] = (1.0, 10.0, 60.0)
    stuck_after_s: float = 300.0
    """An open saga unchanged this long counts as stuck (`sagaline_sagas_stuck`)."""
    tracker_batch_wait_ms: int = 200
    """How far the tracker's projection may trail the saga: its fetches wait this long for
    records to pile up (it is off the saga's critical path; larger batches cost less)."""

    def schema(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def group(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def lanes(self, service: str) -> Lanes:
        """The service group's retry and dead-letter topics."""
        return Lanes(self.group(service), self.retry_delays_s, self.topics.prefix)

    def topic_specs(self) -> list[TopicSpec]:
        """Every topic of the deployment, for the admin step (`sagaline topics ensure`): the
        topic map's and each group's retry lanes and dead-letter topic, as wide as the map's."""
        lanes = [
            TopicSpec(name, partitions=self.topics.partitions, replication=self.topics.replication)
            for service in SERVICES
            for name in (*self.lanes(service).retry_topics, self.lanes(service).dlt)
        ]
        return [*self.topics.specs(), *lanes]

    def source(self, service: str) -> str:
        return f"/sagaline/{service}"

    def worker_spec(
        self,
        service: str,
        *,
        subscribe: tuple[str, ...],
        build_handlers: BuildHandlers,
        **options: Any,
    ) -> WorkerSpec:
        """A service's worker: its schema (migrated from `sagas/migrations/<service>/`), group,
        source and retry lanes named the one way every service names them."""
        schema = self.schema(service)

        async def run_migrations(conn: DbConnection) -> None:
            await migrate.migrate(conn, schema, migrate.load(service))

        return WorkerSpec(
            name=service,
            group=self.group(service),
            schema=schema,
            source=self.source(service),
            topics=self.topics,
            subscribe=subscribe,
            build_handlers=build_handlers,
            migrate=run_migrations,
            delays_s=self.retry_delays_s,
            **options,
        )
