"""The saga's four services in process, on real Kafka and PostgreSQL, with their own
prefix (topics, schemas, groups), so each test has a private deployment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from sagaline.service import serve
from sagaline.settings import Settings
from sagas import invariants, seed
from sagas.config import SagaConfig
from sagas.services import SPECS
from schemas.messages import CancelOrder, PlaceOrder
from schemas.topics import TopicMap
from schemas.values import LineItem
from tests.support import wait_until


def order(
    order_id: str, customer: str = "alice", items: list[tuple[str, int, int]] | None = None
) -> PlaceOrder:
    lines = [LineItem(sku=s, quantity=q, unit_price_minor=p) for s, q, p in (items or [("mug", 1, 1500)])]
    return PlaceOrder(
        order_id=order_id,
        idempotency_key=f"idem-key-{order_id}",
        customer_id=customer,
        currency="EUR",
        items=lines,
    )


class SagaPlatform:
    def __init__(
        self,
        kafka: KafkaConnection,
        postgres_dsn: str,
        unique: str,
        *,
        payment_timeout_s: float = 30.0,
        stock_timeout_s: float = 30.0,
        retry_delays_s: tuple[float, ...] = (0.5, 1.0, 2.0),
        replication: int = 1,
        stuck_after_s: float = 300.0,
    ) -> None:
        self.kafka = kafka
        self.postgres_dsn = postgres_dsn
        self.config = SagaConfig(
            topics=TopicMap(prefix=f"sg{unique}.", partitions=3, replication=replication),
            prefix=f"s{unique}_",
            payment_timeout_s=payment_timeout_s,
            stock_timeout_s=stock_timeout_s,
            deadline_scan_interval_s=0.2,
            retry_delays_s=retry_delays_s,
            stuck_after_s=stuck_after_s,
        )
        self.pool: asyncpg.Pool[Any] | None = None
        self._running: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self.registries: dict[str, CollectorRegistry] = {}  # each service's metrics, as last started
        self.role_passwords_dir: Path | None = None

    async def setup(self, accounts: list[tuple[str, int]], stock: list[tuple[str, int]]) -> None:
        await ensure_topics(self.kafka, self.config.topics.specs())
        self.pool = await asyncpg.create_pool(self.postgres_dsn, min_size=1, max_size=8)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await seed.migrate_all(conn, self.config)
            await seed.add_accounts(conn, self.config, [(c, "EUR", b) for c, b in accounts])
            await seed.add_stock(conn, self.config, stock)

    def settings(self) -> Settings:
        environ = {
            "SAGALINE_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers,
            "SAGALINE_POSTGRES_DSN": self.postgres_dsn,
            "SAGALINE_SAGA_PREFIX": self.config.prefix,
        }
        if self.role_passwords_dir is not None:  # least privilege: each service as its own role
            environ["SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR"] = str(self.role_passwords_dir)
        return Settings.from_environ(environ)

    async def start(self, *services: str) -> None:
        for name in services or tuple(SPECS):
            stop = asyncio.Event()
            self.registries[name] = registry = CollectorRegistry()
            task = asyncio.create_task(
                serve(self.settings(), SPECS[name](self.config), stop, metrics_port=0, registry=registry)
            )
            self._running[name] = (task, stop)

    def ended(self) -> list[str]:
        """Services whose process loop has ended although the test did not stop them, with
        the error each ended on (a failing loop sets the service's stop event itself, so the
        event cannot tell)."""
        return [
            f"{name}: {task.exception()!r}" if not task.cancelled() and task.exception() else name
            for name, (task, _) in self._running.items()
            if task.done()
        ]

    async def stop(self, *services: str) -> None:
        for name in services or tuple(self._running):
            task, stop = self._running.pop(name)
            stop.set()
            await asyncio.wait_for(task, timeout=60)

    async def close(self) -> None:
        if self._running:
            await self.stop()
        if self.pool:
            await self.pool.close()

    async def publish(self, *messages: PlaceOrder | CancelOrder) -> None:
        async with Publisher(self.kafka, source="/tests/storefront", topics=self.config.topics) as publisher:
            for message in messages:
                await publisher.publish(message)

    async def status(self, order_id: str) -> dict[str, Any] | None:
        assert self.pool is not None
        row = await self.pool.fetchrow(
            f'SELECT status, payment, stock, cancel_reason FROM "{self.config.schema("order")}".orders'
            " WHERE order_id = $1",
            order_id,
        )
        return dict(row) if row else None

    async def wait_status(self, order_id: str, *statuses: str, timeout_s: float = 60.0) -> dict[str, Any]:
        async def reached() -> bool:
            current = await self.status(order_id)
            return current is not None and current["status"] in statuses

        await wait_until(reached, timeout_s=timeout_s)
        result = await self.status(order_id)
        assert result is not None
        return result

    async def scalar(self, sql: str, *args: Any) -> Any:
        """SQL with {order}, {payment}, {inventory}, {tracker} standing for the schemas."""
        assert self.pool is not None
        names = {s: f'"{self.config.schema(s)}"' for s in ("order", "payment", "inventory", "tracker")}
        return await self.pool.fetchval(sql.format(**names), *args)

    async def progress(self) -> dict[str, Any]:
        """Where the sagas stand, for a failure message: orders by status and step, each
        outbox's unsent rows, the services that ended."""
        assert self.pool is not None
        statuses = await self.pool.fetch(
            f'SELECT status, payment, stock, count(*) AS n FROM "{self.config.schema("order")}".orders'
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        unsent = {}
        for service in ("order", "payment", "inventory"):
            unsent[service] = await self.pool.fetchval(
                f'SELECT count(*) FROM "{self.config.schema(service)}".outbox WHERE published_at IS NULL'
            )
        return {
            "orders": [tuple(row) for row in statuses],
            "outbox_unsent": unsent,
            "ended": self.ended(),
        }

    async def invariants(self) -> invariants.InvariantReport:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            return await invariants.check(conn, self.config)
