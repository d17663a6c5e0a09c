"""A test service on the real runtime: on OrderPlaced it adds a ledger row (the side effect)
and emits OrderConfirmed (an outbox row). The customer id selects a fault:

    flaky-N   fail transiently N times (counted outside the transaction), then succeed
    down      always fail transiently
    bug       raise a handler bug (permanent)
    slow-MS   sleep MS milliseconds inside the transaction

Run as a process: python -m tests.workers.ledger --group G --topic T --schema S [...]
(Kafka and PostgreSQL from SAGALINE_KAFKA_BOOTSTRAP / SAGALINE_POSTGRES_DSN).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from consumers.errors import TransientError
from consumers.handlers import HandlerContext, Handlers
from consumers.spec import WorkerSpec
from consumers.unit_of_work import RetryBudget
from producers.db import DbConnection, qualified
from sagaline.runtime import configure_logging, stop_event_on_signals
from sagaline.service import serve
from sagaline.settings import Settings
from schemas.messages import OrderConfirmed, OrderPlaced
from schemas.topics import TopicMap


def migrate_for(schema: str) -> Any:
    async def migrate(conn: DbConnection) -> None:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {qualified(schema, 'ledger')}"
            " (id bigserial PRIMARY KEY, order_id text NOT NULL, amount bigint NOT NULL,"
            "  event_id text NOT NULL);"
            f"CREATE TABLE IF NOT EXISTS {qualified(schema, 'attempts')}"
            " (order_id text PRIMARY KEY, n integer NOT NULL)"
        )

    return migrate


def handlers_for(schema: str) -> Any:
    def build(pool: asyncpg.Pool[Any], registry: CollectorRegistry) -> Handlers:
        handlers = Handlers()

        @handlers.on(OrderPlaced)
        async def on_placed(ctx: HandlerContext, placed: OrderPlaced) -> None:
            fault = placed.customer_id
            if fault.startswith(("flaky-", "down")):
                # an external dependency's view: the attempt count survives our rollbacks
                tries = await pool.fetchval(
                    f"INSERT INTO {qualified(schema, 'attempts')} VALUES ($1, 1)"
                    " ON CONFLICT (order_id) DO UPDATE SET n = attempts.n + 1 RETURNING n",
                    placed.order_id,
                )
                if fault == "down" or tries <= int(fault.removeprefix("flaky-")):
                    raise TransientError(f"payment gateway unavailable (attempt {tries})")
            if fault == "bug":
                raise ZeroDivisionError("handler bug: division by zero")
            if fault.startswith("slow-"):
                await asyncio.sleep(int(fault.removeprefix("slow-")) / 1000)
            await ctx.conn.execute(
                f"INSERT INTO {qualified(schema, 'ledger')} (order_id, amount, event_id) VALUES ($1, $2, $3)",
                placed.order_id,
                placed.total.amount_minor,
                ctx.envelope.id,
            )
            await ctx.emit(OrderConfirmed(order_id=placed.order_id, total=placed.total))

        return handlers

    return build


def spec(
    group: str,
    topic: str,
    schema: str,
    prefix: str,
    delays: tuple[float, ...],
    budget: RetryBudget | None = None,
) -> WorkerSpec:
    return WorkerSpec(
        name="ledger",
        group=group,
        schema=schema,
        source="/tests/ledger",
        topics=TopicMap(prefix=prefix),
        subscribe=(topic,),
        build_handlers=handlers_for(schema),
        migrate=migrate_for(schema),
        delays_s=delays,
        budget=budget
        or RetryBudget(message_attempts=3, batch_attempts=3, initial_backoff_s=0.02, max_backoff_s=0.2),
        run_relay=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--delays", default="0.5,1,1.5")
    args = parser.parse_args()
    settings = Settings()
    configure_logging("INFO")
    delays = tuple(float(d) for d in args.delays.split(","))

    async def run() -> None:
        stop = stop_event_on_signals()
        await serve(
            settings, spec(args.group, args.topic, args.schema, args.prefix, delays), stop, metrics_port=0
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
