"""`sagaline outbox ...` — the rows a service's relay set aside because the broker refuses
them (too large, invalid): list them, and send one again once the cause is fixed."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import typer
from rich.table import Table

from producers.db import qualified
from sagaline.bootstrap import close_pool, create_pool, postgres_dsn, saga_config
from sagaline.console import emit_json, fail, out, safe
from sagaline.settings import Settings
from sagas.config import SERVICES

app = typer.Typer(help="Outbox rows the relay parked: list them, retry one.", no_args_is_help=True)

SERVICE = typer.Option(..., "--service", help=f"Whose outbox: {', '.join(SERVICES)}.")


def _table(settings: Settings, service: str) -> str:
    if service not in SERVICES:
        raise typer.BadParameter(
            f"unknown service {service!r}; one of {', '.join(SERVICES)}", param_hint="--service"
        )
    return qualified(saga_config(settings).schema(service), "outbox")


async def _run(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    pool = await create_pool(settings, await postgres_dsn(settings))
    try:
        return list(await pool.fetch(query, *args))
    finally:
        await close_pool(pool)


@app.command()
def parked(
    service: str = SERVICE,
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Rows the broker refused, oldest first, with the reason (not their payload)."""
    settings = Settings()
    rows = asyncio.run(
        _run(
            settings,
            "SELECT id, event_id, topic, length(value) AS bytes, created_at, parked_at, park_reason"
            f" FROM {_table(settings, service)}"
            " WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id",
        )
    )
    if json_output:
        emit_json([dict(r) for r in rows])
        return
    table = Table("id", "event", "topic", "bytes", "parked", "reason")
    for r in rows:
        table.add_row(
            str(r["id"]), safe(r["event_id"]), safe(r["topic"]), str(r["bytes"]),
            f"{r['parked_at']:%Y-%m-%d %H:%M:%S}", safe(r["park_reason"], limit=200),
        )  # fmt: skip
    out.print(table)
    out.print(f"{len(rows)} parked row(s)")


@app.command()
def retry(
    service: str = SERVICE,
    row_id: int = typer.Option(..., "--id", help="The parked row's id."),
) -> None:
    """Give a parked row back to the relay (after the cause is fixed, e.g. the topic's
    max.message.bytes raised); it is parked again if the broker still refuses it."""
    settings = Settings()
    rows = asyncio.run(
        _run(
            settings,
            f"UPDATE {_table(settings, service)} SET parked_at = NULL, park_reason = NULL"
            " WHERE id = $1 AND parked_at IS NOT NULL AND published_at IS NULL RETURNING event_id",
            row_id,
        )
    )
    if not rows:
        fail(f"no parked row {row_id} in the {service} outbox")
    out.print(f"row {row_id} (event {safe(rows[0]['event_id'])}) handed back to the relay")
