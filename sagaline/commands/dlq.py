"""`sagaline dlq ...` — find, group, inspect, replay, edit, archive and purge dead letters."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import typer
from prometheus_client import CollectorRegistry, Gauge
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consumers.diagnostics import Redactor
from consumers.lanes import STACKTRACE_LIMIT
from dlq import actions, store
from dlq import metrics as dlq_metrics
from producers.publisher import Publisher
from sagaline.bootstrap import close_pool, create_pool, dlq_indexer, endpoints, postgres_dsn, saga_config
from sagaline.console import emit_json, err, fail, out, read_input, safe
from sagaline.ops import OpsServer, process_registry
from sagaline.runtime import configure_logging, run_service, stop_event_on_signals, supervised, until_stopped
from sagaline.settings import Settings
from sagas.config import SERVICES
from sagas.services import SPECS
from schemas.codec import decode
from schemas.errors import DecodeError
from schemas.registry import TYPE_PREFIX, ce_type

app = typer.Typer(
    help="Operate dead letters: find, group, inspect, replay, edit, archive, purge.", no_args_is_help=True
)

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(?:/s)?$")


def _actor(settings: Settings) -> str:
    return settings.operator or os.environ.get("SUDO_USER") or getpass.getuser()


def _filter(
    ids: list[int],
    group: str | None,
    source_topic: str | None,
    event_type: str | None,
    exception_type: str | None,
    saga_id: str | None,
    since: datetime | None,
    until: datetime | None,
    status: list[str],
) -> store.Filter:
    bad = [s for s in status if s not in store.STATUSES]
    if bad:
        raise typer.BadParameter(
            f"unknown status {bad[0]!r}; one of {', '.join(store.STATUSES)}", param_hint="--status"
        )
    if event_type and not event_type.startswith(TYPE_PREFIX):
        event_type = TYPE_PREFIX + event_type
    return store.Filter(
        ids=tuple(ids),
        group=group,
        source_topic=source_topic,
        event_type=event_type,
        exception_type=exception_type,
        saga_id=saga_id,
        since=since,
        until=until,
        statuses=tuple(status),
    )


# Filter options shared by list, stats, replay, archive and purge.
IDS = typer.Option([], "--id", help="Dead-letter id (repeatable).")
GROUP = typer.Option(None, "--group", help="Consumer group that failed.")
SOURCE = typer.Option(None, "--source-topic", help="Topic the record was first consumed from.")
EVENT = typer.Option(None, "--event-type", help="Message type, e.g. OrderPlaced.")
EXCEPTION = typer.Option(None, "--exception", help="Exception type, e.g. schemas.errors.NotJson.")
SAGA = typer.Option(None, "--saga", help="Saga id (the order id).")
SINCE = typer.Option(None, "--since", help="Last failure at or after (ISO 8601).")
UNTIL = typer.Option(None, "--until", help="Last failure before (ISO 8601).")
JSON = typer.Option(False, "--json", help="Machine-readable output.")


async def _with_pool(settings: Settings, work: Any, *, kafka: bool = False) -> Any:
    """Run `work(endpoints, pool)` as the DLQ's role. Only a command that sends to Kafka
    (`kafka`: replay, edit) needs Kafka configured; the others get None for the endpoints."""
    ends = await endpoints(settings, start_local=False) if kafka else None
    pool = await create_pool(
        settings, ends.postgres_dsn if ends else await postgres_dsn(settings), role="dlq"
    )
    try:
        async with pool.acquire() as conn:
            await store.install(conn, saga_config(settings).schema("dlq"))
        return await work(ends, pool)
    finally:
        await close_pool(pool)


def _saga_status(pool: asyncpg.Pool[Any], settings: Settings) -> actions.SagaStatus:
    sagas = f'"{saga_config(settings).schema("tracker")}".sagas'

    async def status(order_id: str) -> str | None:
        try:
            value: str | None = await pool.fetchval(
                f"SELECT status FROM {sagas} WHERE order_id = $1", order_id
            )
        except asyncpg.UndefinedTableError:
            return None  # no tracker deployed
        return value

    return status


@app.command()
def index(
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=0, max=65535, help="Port for /metrics (0 = any)."
    ),
) -> None:
    """Record the dead letters of this deployment's groups (their `.dlt` topics, and no other
    deployment's) in PostgreSQL until SIGTERM."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, "dlq")

    async def run() -> None:
        stop = stop_event_on_signals()
        ends = await endpoints(settings, start_local=False)
        pool = await create_pool(settings, ends.postgres_dsn, role="dlq")
        schema = saga_config(settings).schema("dlq")
        registry = process_registry("dlq")
        indexed = Gauge("sagaline_dlq_indexed", "Dead letters indexed by this process.", registry=registry)
        try:
            async with pool.acquire() as conn:
                await store.install(conn, schema)
            indexer = dlq_indexer(settings, ends.kafka_as("dlq"), pool)
            indexed.set_function(lambda: indexer.indexed)
            port = settings.metrics_port if metrics_port is None else metrics_port
            ops = OpsServer(registry, settings.metrics_host, port, ready=lambda: indexer.running)
            await ops.start()
            config = saga_config(settings)
            gauges = dlq_metrics.gauge_loop(pool, schema, registry, [config.group(s) for s in SERVICES])
            tasks = [
                asyncio.create_task(
                    supervised("dlq-index", lambda: indexer.run(stop), stop), name="dlq-index"
                ),
                asyncio.create_task(supervised("dlq-gauges", lambda: gauges(stop), stop), name="dlq-gauges"),
            ]
            try:  # a stop is bounded as in the services: SAGALINE_SHUTDOWN_DEADLINE_S
                await until_stopped(tasks, stop, settings.shutdown_deadline_s)
            finally:
                await ops.stop()
        finally:
            await close_pool(pool)

    run_service(run(), settings.event_loop)


@app.command("list")
def list_command(
    ids: list[int] = IDS,
    group: str | None = GROUP,
    source_topic: str | None = SOURCE,
    event_type: str | None = EVENT,
    exception_type: str | None = EXCEPTION,
    saga_id: str | None = SAGA,
    since: datetime | None = SINCE,
    until: datetime | None = UNTIL,
    status: list[str] = typer.Option([], "--status", help="new, replayed, resolved, archived (repeatable)."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="Page size."),
    page: int = typer.Option(1, "--page", min=1, help="Page number."),
    json_output: bool = JSON,
) -> None:
    """Dead letters matching the filters, oldest first, paged."""
    flt = _filter(ids, group, source_topic, event_type, exception_type, saga_id, since, until, status)
    settings = Settings()

    async def work(_: Any, pool: asyncpg.Pool[Any]) -> tuple[list[store.Entry], int]:
        schema = saga_config(settings).schema("dlq")
        async with pool.acquire() as conn:
            rows = await store.select(conn, schema, flt, limit=limit, offset=(page - 1) * limit)
            return rows, await store.count(conn, schema, flt)

    rows, total = asyncio.run(_with_pool(settings, work))
    if json_output:
        emit_json({"total": total, "page": page, "entries": [asdict(r) for r in rows]})
        return
    table = Table("id", "status", "group", "source", "event", "exception", "saga", "attempts", "last failure")
    for r in rows:
        table.add_row(
            str(r.id),
            r.status,
            safe(r.consumer_group, limit=80),
            safe(f"{r.source_topic}[{r.source_partition}]@{r.source_offset}", limit=120),
            safe((r.event_type or "?").removeprefix(TYPE_PREFIX), limit=80),
            safe((r.exception_type or "?").rsplit(".", 1)[-1], limit=80),
            safe(r.saga_id or "", limit=80),
            str(r.attempts),
            f"{r.last_failure:%Y-%m-%d %H:%M:%S}" if r.last_failure else "",
        )
    out.print(table)
    out.print(f"page {page}: {len(rows)} of {total}")


@app.command()
def stats(
    group: str | None = GROUP,
    status: list[str] = typer.Option(
        ["new"], "--status", help="Statuses to count (repeatable; default new)."
    ),
    json_output: bool = JSON,
) -> None:
    """The first screen: dead letters grouped by consumer group, exception and event type."""
    flt = _filter([], group, None, None, None, None, None, None, status)
    settings = Settings()

    async def work(_: Any, pool: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
        async with pool.acquire() as conn:
            return await store.stats(conn, saga_config(settings).schema("dlq"), flt)

    groups = asyncio.run(_with_pool(settings, work))
    if json_output:
        emit_json(groups)
        return
    table = Table("group", "exception", "event", "count", "first seen", "last seen")
    for g in groups:
        table.add_row(
            safe(g["consumer_group"], limit=80),
            safe(g["exception_type"] or "?", limit=120),
            safe((g["event_type"] or "?").removeprefix(TYPE_PREFIX), limit=80),
            str(g["count"]),
            f"{g['first_seen']:%Y-%m-%d %H:%M:%S}",
            f"{g['last_seen']:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)


def _redact(value: Any, fields: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if k in fields else _redact(v, fields)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, fields) for v in value]
    return value


@app.command()
def show(
    dead_letter_id: int = typer.Argument(..., metavar="REF", help="Dead-letter id."), json_output: bool = JSON
) -> None:
    """Headers, payload (decoded, or raw when undecodable), stack trace and the saga's status."""
    settings = Settings()

    async def work(_: Any, pool: asyncpg.Pool[Any]) -> tuple[store.Entry | None, str | None]:
        async with pool.acquire() as conn:
            found = await store.select(
                conn, saga_config(settings).schema("dlq"), store.Filter(ids=(dead_letter_id,)), full=True
            )
        if not found:
            return None, None
        saga = await _saga_status(pool, settings)(found[0].saga_id) if found[0].saga_id else None
        return found[0], saga

    entry, saga_status = asyncio.run(_with_pool(settings, work))
    if entry is None:
        fail(f"no dead letter {dead_letter_id}")
    try:
        payload: Any = _redact(json.loads(entry.value or b""), settings.redact_fields)
        decodes, problem = True, None
        decode(entry.value, entry.headers)
    except (ValueError, DecodeError) as exc:
        decodes, problem = False, str(exc)
        if not isinstance(exc, DecodeError):
            payload = {"raw": (entry.value or b"").decode("utf-8", errors="replace")}
    redact = Redactor(settings.redact_fields)
    headers = {
        k: redact(v.decode("utf-8") if v.isascii() else v.hex()) if v is not None else None
        for k, v in entry.headers
        if k != "kafka_dlt-exception-stacktrace"
    }
    message = redact(entry.exception_message or "")
    stacktrace = redact(entry.stacktrace or "")
    details = {
        **asdict(entry),
        "key": entry.key.decode("utf-8", errors="replace") if entry.key else None,
        "value": None,
        "exception_message": message,
        "stacktrace": stacktrace,
        "headers": headers,
        "payload": payload,
        "decodes": decodes,
        "decode_problem": problem,
        "saga_status": saga_status,
    }
    if json_output:
        emit_json(details)
        return
    where = f"{entry.dlt_topic}[{entry.dlt_partition}]@{entry.dlt_offset}"
    source = f"{entry.source_topic}[{entry.source_partition}]@{entry.source_offset}"
    out.print(f"[bold]dead letter {entry.id}[/] ({entry.status}) in {safe(where)}")
    out.print(f"group {safe(entry.consumer_group)}; from {safe(source)}")
    out.print(f"saga {safe(entry.saga_id or '-')} — tracker says: {safe(saga_status or 'unknown')}")
    failure = f"{entry.failure_class} failure x{entry.attempts}: {entry.exception_type}: {message}"
    out.print(safe(failure))
    if problem:
        out.print(f"[yellow]does not decode:[/] {safe(problem)}", highlight=False)
    out.print_json(json.dumps(payload, default=str))
    table = Table("header", "value")
    for k, v in headers.items():
        table.add_row(safe(k, limit=120), safe(v if v is not None else "(null)", limit=120))
    out.print(table)
    out.print(safe(stacktrace, multiline=True, limit=STACKTRACE_LIMIT), highlight=False)


def _parse_rate(text: str | None) -> float | None:
    if text is None:
        return None
    match = _RATE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a rate like 50/s", param_hint="--rate")
    return float(match.group(1))


@app.command()
def replay(
    ids: list[int] = IDS,
    group: str | None = GROUP,
    source_topic: str | None = SOURCE,
    event_type: str | None = EVENT,
    exception_type: str | None = EXCEPTION,
    saga_id: str | None = SAGA,
    since: datetime | None = SINCE,
    until: datetime | None = UNTIL,
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be sent and change nothing."),
    rate: str | None = typer.Option(None, "--rate", help="At most this many per second, e.g. 50/s."),
    yes: bool = typer.Option(False, "--yes", help="Needed when no filter narrows the selection."),
    json_output: bool = JSON,
) -> None:
    """Send dead letters back to their failing group's retry lane (only that group sees them),
    keeping event id and idempotency key; marks them replayed. Default selection: status new."""
    flt = _filter(ids, group, source_topic, event_type, exception_type, saga_id, since, until, [])
    per_second = _parse_rate(rate)
    if flt == store.Filter() and not yes and not dry_run:
        fail("replaying every new dead letter needs --yes (or narrow it with a filter)", code=2)
    settings = Settings()

    async def work(ends: Any, pool: asyncpg.Pool[Any]) -> actions.ReplayReport:
        with Progress(
            TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
            disable=json_output or dry_run,
        ) as bar:  # fmt: skip
            task = bar.add_task("replay", total=None)
            async with Publisher(ends.kafka_as("dlq"), source="/sagaline/dlq") as publisher:
                return await actions.replay(
                    pool,
                    publisher,
                    saga_config(settings).schema("dlq"),
                    flt,
                    actor=_actor(settings),
                    dry_run=dry_run,
                    rate=per_second,
                    saga_status=_saga_status(pool, settings),
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    inbox_retention_s=settings.inbox_retention_s,
                )

    report = asyncio.run(_with_pool(settings, work, kafka=True))
    if json_output:
        emit_json({"dry_run": report.dry_run, "sent": report.sent, "skipped": report.skipped,
                   "stale": report.stale,
                   "seconds": round(report.seconds, 2),
                   "items": [asdict(i) for i in report.items]})  # fmt: skip
        return
    table = Table("id", "group", "lane", "event", "saga", "saga status")
    for i in report.items[:100]:
        event = (i.event_type or "?").removeprefix(TYPE_PREFIX)
        table.add_row(
            str(i.id),
            safe(i.group),
            safe(i.lane),
            safe(event),
            safe(i.saga_id or ""),
            i.saga_status or "unknown",
        )
    out.print(table)
    verb = "would send" if dry_run else "sent"
    out.print(
        f"{verb} {len(report.items) if dry_run else report.sent} dead letter(s) in {report.seconds:.1f}s"
    )
    if report.stale:
        out.print(
            f"[yellow]not sent[/] {len(report.stale)} older than the inbox retention (the group may have"
            f" forgotten applying them; replaying could apply them twice): {report.stale[:20]}"
        )
    if report.skipped:
        out.print(f"skipped {len(report.skipped)} held or changed by another action: {report.skipped[:20]}")


@app.command()
def edit(
    dead_letter_id: int = typer.Argument(..., metavar="REF", help="Dead-letter id."),
    file: Path | None = typer.Option(None, "--file", "-f", help="Corrected JSON payload; '-' for stdin."),
    type_name: str | None = typer.Option(
        None, "--type", help="Message type, only for a record without ce_type (it cannot change a type)."
    ),
    json_output: bool = JSON,
) -> None:
    """Send a corrected payload to the failing group and mark the original resolved. Only a
    new entry; payload fields only (not the type, order id, idempotency key or saga). The
    copy's event id is derived from the entry, so the group applies at most one correction
    of it. Without --file, opens $EDITOR."""
    settings = Settings()
    text = _corrected_text(settings, dead_letter_id, file)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"the corrected payload is not JSON: {exc}", code=2)

    async def work(ends: Any, pool: asyncpg.Pool[Any]) -> actions.EditReport:
        async with Publisher(ends.kafka_as("dlq"), source="/sagaline/dlq") as publisher:
            return await actions.edit(
                pool, publisher, saga_config(settings).schema("dlq"), dead_letter_id, payload,
                actor=_actor(settings), type_name=type_name, handled_types=_handled_types(settings, pool),
            )  # fmt: skip

    try:
        report = asyncio.run(_with_pool(settings, work, kafka=True))
    except actions.EditRefused as exc:
        if json_output:
            emit_json(
                {
                    "sent": False,
                    "reason": str(exc),
                    "errors": [{"path": p, "problem": m} for p, m in exc.errors],
                }
            )
            raise typer.Exit(1) from None
        fail(f"refused, nothing sent: {exc}")
    if json_output:
        emit_json({"sent": True, **asdict(report)})
    else:
        out.print(
            f"sent corrected {report.new_event_id} to {report.lane}; dead letter {report.entry_id} resolved"
        )


def _handled_types(settings: Settings, pool: asyncpg.Pool[Any]) -> actions.HandledTypes:
    """Group -> the message types its service handles (None for a group not of this saga)."""
    config = saga_config(settings)
    by_group = {
        config.group(name): frozenset(
            ce_type(t) for t in spec(config).build_handlers(pool, CollectorRegistry()).message_types
        )
        for name, spec in SPECS.items()
    }
    return by_group.get


def _corrected_text(settings: Settings, dead_letter_id: int, file: Path | None) -> str:
    if file is not None:
        return read_input(file)
    editor = os.environ.get("EDITOR")
    if not editor:
        fail("give the corrected payload with --file (or set $EDITOR)", code=2)

    async def work(_: Any, pool: asyncpg.Pool[Any]) -> bytes:
        async with pool.acquire() as conn:
            found = await store.select(
                conn, saga_config(settings).schema("dlq"), store.Filter(ids=(dead_letter_id,)), full=True
            )
        if not found:
            fail(f"no dead letter {dead_letter_id}")
        return found[0].value or b""

    original = asyncio.run(_with_pool(settings, work))
    with tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False) as handle:
        try:
            handle.write(json.dumps(json.loads(original), indent=2))
        except ValueError:
            handle.write(original.decode("utf-8", errors="replace"))
        path = handle.name
    subprocess.run([*editor.split(), path], check=True)
    return read_input(Path(path))


def _bulk(action: str) -> Any:
    def command(
        ids: list[int] = IDS,
        group: str | None = GROUP,
        source_topic: str | None = SOURCE,
        event_type: str | None = EVENT,
        exception_type: str | None = EXCEPTION,
        saga_id: str | None = SAGA,
        since: datetime | None = SINCE,
        until: datetime | None = UNTIL,
        status: list[str] = typer.Option([], "--status", help="Only entries in these statuses."),
        yes: bool = typer.Option(False, "--yes", help="Confirm: required."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count what would change; change nothing."),
        json_output: bool = JSON,
    ) -> None:
        flt = _filter(ids, group, source_topic, event_type, exception_type, saga_id, since, until, status)
        if not yes and not dry_run:
            fail(f"{action} changes the index: add --yes (or --dry-run to count first)", code=2)
        settings = Settings()

        async def work(_: Any, pool: asyncpg.Pool[Any]) -> int:
            schema = saga_config(settings).schema("dlq")
            if action == "purge":
                return await actions.purge(pool, schema, flt, actor=_actor(settings), dry_run=dry_run)
            return await actions.set_status(
                pool, schema, flt, actor=_actor(settings), status="archived", dry_run=dry_run
            )

        changed = asyncio.run(_with_pool(settings, work))
        if json_output:
            emit_json({"action": action, "dry_run": dry_run, "count": changed})
        else:
            out.print(f"{'would ' + action if dry_run else action + 'd'} {changed} dead letter(s)")

    command.__doc__ = {
        "archive": "Mark dead letters archived (kept, hidden from the default views). Requires --yes.",
        "purge": "Delete dead letters from the index (Kafka keeps them until retention). Requires --yes.",
    }[action]
    return command


app.command("archive")(_bulk("archive"))
app.command("purge")(_bulk("purge"))
