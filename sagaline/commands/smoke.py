"""`sagaline smoke` — start (if needed) and prove the stack with a real round trip."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import typer

from sagaline.bootstrap import endpoints
from sagaline.console import emit_json, out
from sagaline.settings import Settings
from sagaline.smoke import SmokeResult, run_smoke


def smoke(
    messages: int = typer.Option(10, "--messages", min=1, max=100_000, help="How many records to send."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Round trip through Kafka and PostgreSQL; exit 1 on any mismatch."""

    async def run() -> SmokeResult:
        ends = await endpoints(Settings(), start_local=True)
        return await run_smoke(ends.kafka_as("admin"), ends.postgres_dsn, messages)

    if json_output:
        result = asyncio.run(run())
        emit_json({**asdict(result), "ok": result.ok})
    else:
        with out.status("starting the stack if needed and running the round trip..."):
            result = asyncio.run(run())
        verdict = "[green]OK[/]" if result.ok else "[red]FAILED[/]"
        out.print(
            f"{verdict} kafka: {result.produced} produced, {result.consumed} consumed, "
            f"committed offset {result.committed_offset} on {result.topic}; "
            f"postgres round trip: {result.postgres_round_trip}; {result.seconds}s"
        )
    if not result.ok:
        raise typer.Exit(1)
