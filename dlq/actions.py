"""Operator actions on dead letters: replay, edit-and-send, archive, purge. Every action
writes an audit row (dry runs too). Replays go to the failing group's retry lane only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dlq import store
from dlq.record import corrected_record, replay_record, retry_lane
from producers.errors import PublishValidationError
from producers.publisher import Publisher, parse_payload
from schemas.codec import Record, header_map
from schemas.envelope import Envelope
from schemas.errors import DecodeError
from schemas.messages import Message

SagaStatus = Callable[[str], Awaitable[str | None]]
Progress = Callable[[int, int], None]

REPLAYABLE = ("new", "replayed")


@dataclass
class ReplayItem:
    id: int
    group: str
    lane: str
    event_id: str | None
    event_type: str | None
    saga_id: str | None
    saga_status: str | None


@dataclass
class ReplayReport:
    dry_run: bool
    items: list[ReplayItem] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0


async def replay(
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    schema: str,
    flt: store.Filter,
    *,
    actor: str,
    dry_run: bool = False,
    rate: float | None = None,
    saga_status: SagaStatus | None = None,
    progress: Progress | None = None,
    limit: int = 1_000_000,
) -> ReplayReport:
    """Send the selected entries back to their group's retry lane (due at once), keeping key,
    value, event id and idempotency key; mark them replayed once the broker acknowledged."""
    if not flt.statuses:
        flt = store.Filter(**{**flt.__dict__, "statuses": REPLAYABLE if flt.ids else ("new",)})
    async with pool.acquire() as conn:
        entries = await store.select(conn, schema, flt, limit=limit, full=True)
    report = ReplayReport(dry_run=dry_run)
    for entry in entries:
        status = await saga_status(entry.saga_id) if saga_status and entry.saga_id else None
        report.items.append(
            ReplayItem(
                entry.id,
                entry.consumer_group,
                retry_lane(entry.consumer_group),
                entry.event_id,
                entry.event_type,
                entry.saga_id,
                status,
            )
        )
    started = time.monotonic()
    if not dry_run:
        pending: list[tuple[int, asyncio.Future[Any], str]] = []
        for number, entry in enumerate(entries):
            if rate:
                await _pace(started, number, rate)
            record = replay_record(entry.id, entry.key, entry.value, entry.headers, datetime.now(UTC))
            lane = retry_lane(entry.consumer_group)
            pending.append((entry.id, await publisher.enqueue(lane, record), lane))
            if len(pending) >= 200 or number == len(entries) - 1:
                await _acknowledge_and_mark(pool, schema, pending, "replayed")
                report.sent += len(pending)
                pending = []
                if progress:
                    progress(report.sent, len(entries))
    report.seconds = time.monotonic() - started
    async with pool.acquire() as conn:
        await store.audit(
            conn,
            schema,
            actor=actor,
            action="replay",
            dry_run=dry_run,
            flt=flt,
            count=len(entries),
            details={"rate": rate, "ids": [e.id for e in entries][:1000]},
        )
    return report


async def _pace(started: float, number: int, rate: float) -> None:
    delay = started + number / rate - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _acknowledge_and_mark(
    pool: asyncpg.Pool[Any], schema: str, pending: list[tuple[int, asyncio.Future[Any], str]], status: str
) -> None:
    for _, future, lane in pending:
        await Publisher.acknowledged(future, lane, "")
    async with pool.acquire() as conn:
        await store.mark(conn, schema, [entry_id for entry_id, _, _ in pending], status)


class EditRefused(Exception):
    """The corrected payload cannot be sent; nothing was. `errors` has the field paths."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


@dataclass
class EditReport:
    entry_id: int
    lane: str
    new_event_id: str
    corrects_event_id: str | None


async def edit(
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    schema: str,
    entry_id: int,
    payload: Any,
    *,
    actor: str,
    type_name: str | None = None,
) -> EditReport:
    """Validate a corrected payload, send it (new event id, linked to the original) to the
    failing group's retry lane, and mark the original resolved — never both sent."""
    async with pool.acquire() as conn:
        found = await store.select(conn, schema, store.Filter(ids=(entry_id,)), full=True)
    if not found:
        raise EditRefused(f"no dead letter {entry_id}")
    entry = found[0]
    if entry.status not in REPLAYABLE:
        raise EditRefused(
            f"dead letter {entry_id} is {entry.status}: only new or replayed ones can be edited"
        )
    try:
        context = header_map(entry.headers)
    except DecodeError:
        context = {}
    name = type_name or context.get("ce_type")
    if not name:
        raise EditRefused("the dead letter has no ce_type header: say which type the payload is (--type)")
    try:
        message = parse_payload(name.removeprefix("io.sagaline."), payload)
    except PublishValidationError as exc:
        raise EditRefused(str(exc), exc.errors) from None
    corrected: Envelope[Message] = Envelope(
        source=context.get("ce_source") or "/sagaline/dlq-edit",
        saga_id=context.get("ce_sagaid") or message.order_id,
        causation_id=context.get("ce_causationid") or None,
        idempotency_key=context.get("ce_idempotencykey") or getattr(message, "idempotency_key", None),
        traceparent=context.get("traceparent") or None,
        data=message,
    )
    record: Record = corrected_record(entry.id, entry.headers, corrected, datetime.now(UTC))
    lane = retry_lane(entry.consumer_group)
    await publisher.send(lane, record, corrected.id)
    async with pool.acquire() as conn, conn.transaction():
        await store.mark(conn, schema, [entry.id], "resolved")
        await store.audit(
            conn,
            schema,
            actor=actor,
            action="edit",
            dry_run=False,
            flt=store.Filter(ids=(entry.id,)),
            count=1,
            details={"new_event_id": corrected.id, "corrects": entry.event_id, "type": name},
        )
    return EditReport(entry.id, lane, corrected.id, entry.event_id)


async def set_status(
    pool: asyncpg.Pool[Any], schema: str, flt: store.Filter, *, actor: str, status: str, dry_run: bool = False
) -> int:
    """Archive (or otherwise re-status) the selected entries; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        entries = await store.select(conn, schema, flt, limit=10_000_000)
        if not dry_run:
            await store.mark(conn, schema, [e.id for e in entries], status)
        await store.audit(
            conn, schema, actor=actor, action=status, dry_run=dry_run, flt=flt, count=len(entries)
        )
    return len(entries)


async def purge(
    pool: asyncpg.Pool[Any], schema: str, flt: store.Filter, *, actor: str, dry_run: bool = False
) -> int:
    """Delete the selected entries from the index (the Kafka records age out with retention)."""
    async with pool.acquire() as conn, conn.transaction():
        if dry_run:
            removed = await store.count(conn, schema, flt)
        else:
            removed = await store.delete(conn, schema, flt)
        await store.audit(conn, schema, actor=actor, action="purge", dry_run=dry_run, flt=flt, count=removed)
    return removed
