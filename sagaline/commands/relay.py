"""`sagaline relay` — publish the transactional outbox of one or more service schemas."""

from __future__ import annotations

import asyncio
import logging

import typer

from producers import outbox
from producers.db import qualified
from producers.metrics import RelayMetrics
from producers.publisher import PASS_SENDER, Publisher
from producers.relay import OutboxRelay, RelayOptions
from sagaline.bootstrap import close_pool, create_pool, endpoints
from sagaline.ops import OpsServer, process_registry
from sagaline.runtime import configure_logging, configure_tracing, run_service, stop_event_on_signals
from sagaline.settings import Settings

log = logging.getLogger("sagaline.relay")


def relay(
    schemas: list[str] = typer.Option(
        ..., "--schema", help="Service schema whose outbox to publish (repeatable)."
    ),
    batch_size: int = typer.Option(
        500, "--batch-size", min=1, max=10_000, help="Rows per relay pass (one transaction)."
    ),
    poll_interval: float = typer.Option(
        1.0, "--poll-interval", min=0.05, help="Seconds between polls (NOTIFY wakes sooner)."
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=0, max=65535, help="Port for /metrics (default: settings; 0 = any free)."
    ),
) -> None:
    """Publish outbox rows in order per key until SIGTERM/SIGINT; safe to run several at once."""
    for schema in schemas:
        try:
            qualified(schema, "outbox")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--schema") from None
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, "relay")
    stop_tracing = configure_tracing(settings, "relay")
    try:
        run_service(
            _run(
                settings,
                schemas,
                RelayOptions(batch_size=batch_size, poll_interval_s=poll_interval),
                metrics_port,
            ),
            settings.event_loop,
        )
    finally:
        stop_tracing()


async def _run(
    settings: Settings, schemas: list[str], options: RelayOptions, metrics_port: int | None
) -> None:
    stop = stop_event_on_signals()
    ends = await endpoints(settings, start_local=False)
    if ends.kafka_passwords_dir is not None and len(schemas) != 1:
        raise ValueError("under least privilege a relay publishes one service's outbox: name one schema")
    # under least privilege, as the user of the service whose outbox it publishes
    kafka = ends.kafka_as(schemas[0].removeprefix(settings.saga_prefix))
    registry = process_registry("relay")
    metrics = RelayMetrics(registry)
    pool = await create_pool(settings, ends.postgres_dsn, service=True)
    ops = OpsServer(
        registry,
        settings.metrics_host,
        settings.metrics_port if metrics_port is None else metrics_port,
        ready=lambda: not stop.is_set(),
    )
    try:
        async with pool.acquire() as conn:
            for schema in schemas:
                await outbox.install(conn, schema)
        port = await ops.start()
        async with Publisher(kafka, source="/sagaline/relay", **PASS_SENDER) as publisher:
            relays = [OutboxRelay(pool, publisher, s, options=options, metrics=metrics) for s in schemas]
            log.info("relay publishing %s; metrics on %s:%d", ", ".join(schemas), settings.metrics_host, port)
            await asyncio.gather(*(r.run(stop) for r in relays))
        log.info("relay stopped cleanly")
    finally:
        await ops.stop()
        await close_pool(pool)
