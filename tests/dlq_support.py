"""The saga platform plus a running DLQ indexer, and the operator's actions, for tests."""

from __future__ import annotations

import asyncio
from typing import Any

from dlq import actions, store
from dlq.indexer import Indexer, dlt_pattern
from producers.publisher import Publisher
from tests.saga_support import SagaPlatform
from tests.support import wait_until


class Operator:
    """The saga platform plus a running DLQ indexer, and the operator's actions."""

    def __init__(self, saga: SagaPlatform) -> None:
        self.saga = saga
        self.schema = saga.config.schema("dlq")
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def pool(self) -> Any:
        return self.saga.pool

    async def start_indexer(self) -> None:
        async with self.pool.acquire() as conn:
            await store.install(conn, self.schema)
        prefix = self.saga.config.topics.prefix + self.saga.config.prefix
        indexer = Indexer(
            self.saga.kafka, self.pool, self.schema, group=f"{prefix}dlq-index", pattern=dlt_pattern(prefix)
        )
        self._task = asyncio.create_task(indexer.run(self._stop))

    async def close(self) -> None:
        self._stop.set()
        if self._task:
            await asyncio.wait_for(self._task, timeout=30)

    async def entries(self, **filters: Any) -> list[store.Entry]:
        async with self.pool.acquire() as conn:
            return await store.select(conn, self.schema, store.Filter(**filters), limit=100_000, full=True)

    async def wait_entries(self, n: int, **filters: Any) -> list[store.Entry]:
        async def indexed() -> bool:
            if self._task and self._task.done():
                self._task.result()  # the indexer died: show why
            return len(await self.entries(**filters)) >= n

        await wait_until(indexed, timeout_s=60)
        return await self.entries(**filters)

    async def replay(self, flt: store.Filter, **options: Any) -> actions.ReplayReport:
        async with Publisher(self.saga.kafka, source="/sagaline/dlq") as publisher:
            return await actions.replay(
                self.pool, publisher, self.schema, flt, actor="test-operator", **options
            )

    async def audit(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(f'SELECT * FROM "{self.schema}".audit ORDER BY id')
        return [dict(r) for r in rows]
