"""`sagaline worker NAME` and `sagaline up` — run one service, or the whole platform."""

from __future__ import annotations

import asyncio
from enum import StrEnum

import typer
from rich.table import Table

from sagaline.bootstrap import endpoints, prepare_kafka, saga_config
from sagaline.console import err, fail, out, safe
from sagaline.platform import Platform
from sagaline.runtime import configure_logging, configure_tracing, run_service, stop_event_on_signals
from sagaline.service import serve
from sagaline.settings import Settings
from sagas.services import SPECS


class Service(StrEnum):
    order = "order"
    payment = "payment"
    inventory = "inventory"
    tracker = "tracker"


def worker(
    name: Service = typer.Argument(..., help="Which service to run."),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Port for /metrics, /healthz, /readyz (default: settings; 0 = any).",
    ),
) -> None:
    """Run one saga service (its consumer group, outbox relay and background loops) until SIGTERM."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, name.value)
    spec = SPECS[name.value](saga_config(settings))
    stop_tracing = configure_tracing(settings, name.value)

    async def run() -> None:
        await serve(settings, spec, stop_event_on_signals(), metrics_port)

    try:
        run_service(run(), settings.event_loop)
    finally:
        stop_tracing()


def up(
    metrics_base_port: int = typer.Option(
        9400, "--metrics-base-port", help="Process N serves its metrics on this port + N."
    ),
    replicas: int = typer.Option(
        1,
        "--replicas",
        min=1,
        max=16,
        help="Processes per saga service, sharing its consumer group (and its partitions).",
    ),
) -> None:
    """Run the whole platform: the local stack when nothing is configured, topics, and every
    service as its own process. Ctrl-C or SIGTERM stops everything cleanly."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, "up")
    asyncio.run(_up(settings, metrics_base_port, replicas))


async def _up(settings: Settings, base_port: int, replicas: int) -> None:
    stop = stop_event_on_signals()
    with out.status("starting Kafka and PostgreSQL if needed, creating topics..."):
        ends = await endpoints(settings, start_local=True)
        await prepare_kafka(ends, saga_config(settings))
    platform = Platform(ends, settings.state_dir / "logs", base_port, replicas=replicas)
    platform.start()
    try:
        with out.status("waiting for every service to be ready..."):
            await platform.wait_ready()
        table = Table("service", "metrics", "log")
        for child in platform.children:
            table.add_row(child.name, f"http://127.0.0.1:{child.port}/metrics", str(child.log))
        out.print(table)
        out.print(f"Kafka {ends.kafka.bootstrap_servers} — PostgreSQL ready — press Ctrl-C to stop")
        while not stop.is_set():
            for event in platform.supervise():
                err.print(safe(event), highlight=False)
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                continue
    except RuntimeError as exc:
        platform.stop()
        fail(str(exc))
    codes = platform.stop(settings.shutdown_deadline_s + 10)
    bad = {name: code for name, code in codes.items() if code != 0}
    if bad:
        fail(f"services did not stop cleanly: {bad}")
    out.print("stopped cleanly")
