"""`sagaline demo` — drive orders through the running saga and check the invariants."""

from __future__ import annotations

import asyncio
from enum import StrEnum

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sagaline import kafkaacls
from sagaline.bootstrap import Endpoints, create_pool, endpoints, prepare_kafka, saga_config
from sagaline.console import emit_json, err, out
from sagaline.demo import DemoOptions, DemoResult, absent_services, hops_line, measure_hops, run_demo
from sagaline.platform import Platform
from sagaline.runtime import configure_logging
from sagaline.settings import Settings
from sagas.config import SagaConfig


async def _require_running(ends: Endpoints, config: SagaConfig) -> None:
    """`--platform attach` with nothing to attach to would publish every order and wait out
    the timeout: refuse at once instead, naming the services that are not running."""
    absent = await absent_services(ends.kafka_as(kafkaacls.ADMIN), config)
    if absent:
        raise typer.BadParameter(
            f"nothing to attach to: no {', '.join(absent)} service is running for this deployment"
            " (start them with `sagaline up`, or use --platform start)",
            param_hint="--platform",
        )


class PlatformMode(StrEnum):
    start = "start"
    attach = "attach"


def demo(
    orders: int = typer.Option(
        1000, "--orders", "-n", min=1, max=1_000_000, help="How many orders to place."
    ),
    decline_rate: float = typer.Option(
        0.1, "--decline-rate", min=0, max=1, help="Share of customers without funds."
    ),
    stockout_rate: float = typer.Option(
        0.1, "--stockout-rate", min=0, max=1, help="Share of orders for a scarce SKU."
    ),
    cancel_rate: float = typer.Option(
        0.05, "--cancel-rate", min=0, max=1, help="Share of orders the customer cancels."
    ),
    timeout: float = typer.Option(300.0, "--timeout", min=1, help="Seconds to wait for every saga to end."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for a repeatable order mix."),
    rate: float | None = typer.Option(
        None,
        "--rate",
        min=0.1,
        max=100_000,
        help="Orders per second, open loop (latency then measures the saga, not a queue). "
        "Default: all at once.",
    ),
    platform_mode: PlatformMode = typer.Option(
        PlatformMode.start,
        "--platform",
        help="start: run the services for the demo; attach: use running ones.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Place orders as an upstream would, wait until every saga is terminal, print a summary,
    check the invariants (exit 1 if any fails or a saga is left open)."""
    if decline_rate + stockout_rate > 1:
        raise typer.BadParameter(
            "--decline-rate plus --stockout-rate must not exceed 1", param_hint="--decline-rate"
        )
    settings = Settings()
    configure_logging("WARNING")
    options = DemoOptions(
        orders, decline_rate, stockout_rate, cancel_rate, timeout_s=timeout, seed=seed, rate=rate
    )
    result = asyncio.run(_run(settings, options, platform_mode, quiet=json_output))
    if json_output:
        emit_json(result.as_dict())
    else:
        _print(result)
    if not result.ok:
        raise typer.Exit(1)


async def _run(settings: Settings, options: DemoOptions, mode: PlatformMode, quiet: bool) -> DemoResult:
    config = saga_config(settings)
    with (
        out.status("starting Kafka and PostgreSQL if needed, creating topics...") if not quiet else _nothing()
    ):
        ends = await endpoints(settings, start_local=True)
        prepared = await prepare_kafka(ends, config)
    # only the admin may describe groups: without its password (least privilege, the admin
    # steps done elsewhere) a missing platform is left to the timeout
    if mode is PlatformMode.attach and prepared is not None:
        await _require_running(ends, config)
    platform = None
    if mode is PlatformMode.start:
        platform = Platform(ends, settings.state_dir / "logs", settings.metrics_port)
        platform.start()
    pool = await create_pool(settings, ends.postgres_dsn)
    # least privilege configured: the invariant check runs as the read-only role
    least_privilege = settings.postgres_role_passwords_dir is not None
    reader = await create_pool(settings, ends.postgres_dsn, role="reader") if least_privilege else None
    try:
        if platform:
            with out.status("starting order, payment, inventory and tracker...") if not quiet else _nothing():
                await platform.wait_ready()
        with Progress(
            TextColumn("sagas ended"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=quiet,
        ) as bar:
            task = bar.add_task("sagas", total=options.orders)
            result = await run_demo(
                ends.kafka_as("upstream"),
                pool,
                config,
                options,
                progress=lambda done, total: bar.update(task, completed=done),
                reader=reader,
            )
        async with (reader or pool).acquire() as conn:
            await measure_hops(conn, config, result)
        return result
    finally:
        await pool.close()
        if reader:
            await reader.close()
        if platform:
            platform.stop(settings.shutdown_deadline_s + 10)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _print(result: DemoResult) -> None:
    table = Table("outcome", "orders", title=f"demo run {result.run_id}: {result.orders} orders")
    for outcome, count in result.outcomes.items():
        table.add_row(outcome, str(count))
    if result.open_sagas:
        table.add_row("[red]not terminal[/]", str(result.open_sagas))
    out.print(table)
    latency = result.latency_ms
    offered = f"offered {result.offered_rate:.0f}/s open loop; " if result.offered_rate else "all at once; "
    out.print(
        f"{offered}throughput {result.sagas_per_s:.1f} sagas/s over {result.seconds:.1f}s; saga latency"
        f" p50 {latency.get('p50', 0):.0f} ms, p95 {latency.get('p95', 0):.0f} ms,"
        f" p99 {latency.get('p99', 0):.0f} ms (from each saga's last request)"
    )
    seconds = result.by_second_ms
    if seconds:
        out.print(
            f"p99 of each second's requests: median {seconds['p99_median']:.0f} ms, worst"
            f" {seconds['p99_worst']:.0f} ms ({seconds['worst_at_s']:.0f} s in)",
            highlight=False,
        )
    if result.hops_ms:
        out.print("per hop, p50 / p99 ms: " + hops_line(result.hops_ms), highlight=False)
    figures = result.invariants.figures
    out.print(
        f"money: charged {figures.get('charged_minor', 0)} - refunded {figures.get('refunded_minor', 0)}"
        f" = confirmed {figures.get('confirmed_total_minor', 0)} (minor units)"
    )
    for name, passed in result.invariants.checked.items():
        out.print(f"  {'[green]ok[/]  ' if passed else '[red]FAIL[/]'} {name}")
    for violation in result.invariants.violations[:20]:
        out.print(f"  [red]-[/] {violation}", highlight=False)
