"""Running the ledger test service in process (for observation) and producing its input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from consumers import inbox
from consumers.lanes import Lanes
from consumers.metrics import ConsumerMetrics
from consumers.unit_of_work import RetryBudget, UnitOfWork
from consumers.worker import Worker, WorkerOptions
from producers import outbox
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from sagaline.service import serve
from sagaline.settings import Settings
from schemas.messages import OrderPlaced
from schemas.topics import TopicMap
from schemas.values import LineItem, Money
from tests.support import create_topic_map, wait_until
from tests.workers import ledger


def placed(order_id: str, customer: str = "c-1", amount: int = 1000) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_id=customer,
        items=[LineItem(sku="sku-1", quantity=1, unit_price_minor=amount)],
        total=Money(amount_minor=amount, currency="EUR"),
    )


class LedgerService:
    """The ledger worker with its own topics, group and schema."""

    def __init__(
        self,
        kafka: KafkaConnection,
        postgres_dsn: str,
        unique: str,
        delays: tuple[float, ...],
        budget: RetryBudget | None = None,
    ) -> None:
        self.budget = budget
        self.kafka = kafka
        self.postgres_dsn = postgres_dsn
        self.prefix = f"wk{unique}."
        self.group = f"ledger-{unique}"
        self.schema = f"ledger_{unique}"
        self.delays = delays
        self.topics = TopicMap(prefix=self.prefix, partitions=3, replication=1)
        self.lanes = Lanes(self.group, delays, self.prefix)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.pool: asyncpg.Pool[Any] | None = None

    @property
    def topic(self) -> str:
        return self.topics.orders

    async def setup(self) -> None:
        await create_topic_map(self.kafka, self.prefix)
        self.pool = await asyncpg.create_pool(self.postgres_dsn, min_size=1, max_size=4)

    def settings(self) -> Settings:
        return Settings.from_environ(
            {
                "SAGALINE_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers,
                "SAGALINE_POSTGRES_DSN": self.postgres_dsn,
                "SAGALINE_SHUTDOWN_DEADLINE_S": "20",
            }
        )

    def cli_args(self) -> list[str]:
        return [
            "--group", self.group, "--topic", self.topic, "--schema", self.schema, "--prefix", self.prefix,
            "--delays", ",".join(str(d) for d in self.delays),
        ]  # fmt: skip

    def cli_env(self) -> dict[str, str]:
        return {
            "SAGALINE_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers,
            "SAGALINE_POSTGRES_DSN": self.postgres_dsn,
        }

    async def start(self) -> None:
        self._stop = asyncio.Event()
        spec = ledger.spec(self.group, self.topic, self.schema, self.prefix, self.delays, self.budget)
        self._task = asyncio.create_task(serve(self.settings(), spec, self._stop, metrics_port=0))

        async def migrated() -> bool:
            assert self.pool is not None
            return bool(
                await self.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self.schema}.ledger")
            )

        await wait_until(migrated, timeout_s=30)

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            await asyncio.wait_for(self._task, timeout=60)

    async def close(self) -> None:
        if self._task and not self._task.done():
            await self.stop()
        if self.pool:
            await self.pool.close()

    async def publish(self, messages: list[OrderPlaced]) -> list[str]:
        async with Publisher(self.kafka, source="/tests/order", topics=self.topics) as publisher:
            return [(await publisher.publish(m)).event_id for m in messages]

    async def produce_raw(self, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer = AIOKafkaProducer(**self.kafka.client_kwargs(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(self.topic, value, key=key, headers=headers, partition=0)
        finally:
            await producer.stop()

    async def scalar(self, sql: str, *args: Any) -> Any:
        assert self.pool is not None
        return await self.pool.fetchval(sql.replace("{s}", f'"{self.schema}"'), *args)

    async def ledger_rows(self) -> int:
        count: int = await self.scalar("SELECT count(*) FROM {s}.ledger")
        return count


@asynccontextmanager
async def running(service: LedgerService, registry: CollectorRegistry, **options: Any) -> AsyncIterator[None]:
    """The ledger worker built directly, in this process, with the given `WorkerOptions`
    (how long a poll waits, the commit interval, the linger)."""
    assert service.pool is not None
    spec = ledger.spec(service.group, service.topic, service.schema, service.prefix, service.delays)
    async with service.pool.acquire() as conn:
        await outbox.install(conn, spec.schema)
        await inbox.install(conn, spec.schema)
        assert spec.migrate is not None
        await spec.migrate(conn)
    lanes = Lanes(spec.group, spec.delays_s, spec.topics.prefix)
    uow = UnitOfWork(
        service.pool,
        schema=spec.schema,
        group=spec.group,
        source=spec.source,
        handlers=spec.build_handlers(service.pool, registry),
        topics=spec.topics,
        lanes=lanes,
    )
    stop = asyncio.Event()
    async with Publisher(service.kafka, source=spec.source) as publisher:
        worker_options = WorkerOptions(topics=spec.subscribe, **options)
        worker = Worker(service.kafka, uow, publisher, lanes, worker_options, ConsumerMetrics(registry))
        await worker.ensure_lanes()
        task = asyncio.create_task(worker.run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=60)
