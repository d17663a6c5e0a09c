"""`sagaline saga show|list` — where each saga is, from the tracker's timeline."""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import asyncpg
import typer
from rich.table import Table

from sagaline.bootstrap import connect, postgres_dsn, saga_config
from sagaline.console import emit_json, fail, out, safe
from sagaline.settings import Settings
from sagas import tracker

app = typer.Typer(
    help="Inspect sagas: one order's timeline, or the sagas that need an operator.", no_args_is_help=True
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STATUSES = tracker.STATUS_ORDER
MAX_DURATION = timedelta(days=36_500)


def parse_duration(text: str) -> timedelta:
    """`90s`, `5m`, `2h`, `1d`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter(
            f"{text!r} is not a duration like 30s, 5m, 2h or 1d", param_hint="--stuck-for"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise typer.BadParameter(
            f"{text!r} is longer than {MAX_DURATION.days} days", param_hint="--stuck-for"
        )
    return timedelta(seconds=seconds)


async def _connect(settings: Settings) -> asyncpg.Connection[Any]:
    return await connect(await postgres_dsn(settings))


@app.command()
def show(
    order_id: str = typer.Argument(..., help="The order id (the saga's key)."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One saga: status, current step and every event with its time and source."""
    settings = Settings()

    async def run() -> tuple[tracker.SagaRow | None, list[dict[str, Any]]]:
        conn = await _connect(settings)
        try:
            return await tracker.show(conn, saga_config(settings).schema("tracker"), order_id)
        finally:
            await conn.close()

    saga, events = asyncio.run(run())
    if saga is None:
        fail(f"no saga for order {order_id!r} (the tracker has seen no event about it)")
    if json_output:
        emit_json({"saga": asdict(saga), "timeline": events})
        return
    out.print(
        f"[bold]{safe(saga.order_id)}[/] {saga.status} — step: {safe(saga.step)}"
        + (f" — reason: {safe(saga.reason)}" if saga.reason else "")
        + f"\nstarted {saga.started_at:%Y-%m-%d %H:%M:%S.%f}, last change {saga.updated_at:%H:%M:%S.%f}"
    )
    table = Table("time", "source", "event", "detail")
    for event in events:
        table.add_row(
            f"{event['occurred_at']:%H:%M:%S.%f}",
            safe(event["source"], limit=80),
            safe(event["type"], limit=80),
            safe(event["summary"], limit=80),
        )
    out.print(table)


@app.command("list")
def list_command(
    status: list[str] = typer.Option(
        [], "--status", help=f"Filter by status (repeatable): {', '.join(STATUSES)}."
    ),
    stuck_for: str | None = typer.Option(
        None, "--stuck-for", help="Only open sagas unchanged for this long (5m)."
    ),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="At most this many rows."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Sagas by status; `--stuck-for 5m` finds the open ones that need an operator."""
    unknown = [s for s in status if s.upper() not in STATUSES]
    if unknown:
        raise typer.BadParameter(
            f"unknown status {unknown[0]!r}; one of {', '.join(STATUSES)}", param_hint="--status"
        )
    stuck = parse_duration(stuck_for) if stuck_for else None
    settings = Settings()

    async def run() -> list[tracker.SagaRow]:
        conn = await _connect(settings)
        try:
            return await tracker.list_sagas(
                conn,
                saga_config(settings).schema("tracker"),
                statuses=[s.upper() for s in status],
                stuck_for=stuck,
                limit=limit,
            )
        finally:
            await conn.close()

    rows = asyncio.run(run())
    if json_output:
        emit_json([asdict(r) for r in rows])
        return
    table = Table("order", "status", "step", "last event", "updated", "reason")
    for row in rows:
        table.add_row(
            safe(row.order_id),
            row.status,
            safe(row.step),
            safe(row.last_event),
            f"{row.updated_at:%H:%M:%S}",
            safe(row.reason or "", limit=120),
        )
    out.print(table)
    out.print(f"{len(rows)} saga(s)")
