"""Operator actions on dead letters: replay, edit-and-send, archive, purge.

Every action is exclusive per entry and leaves an audit row in the same transaction as the
status change it makes: the action locks its entries (`SELECT ... FOR UPDATE`), checks
their status, sends, then marks them and writes its audit row before committing. A second
action on the same entry waits (edit) or passes it over (replay), then finds the new status.
A crash after the send and before the commit rolls the status and the audit back; the
record that went out carries an event id the failing group's inbox knows if it was applied,
so repeating the action applies the change once:
- a replay re-sends the original record (same event id);
- an edit's corrected copy has an event id derived from the dead letter's own coordinates,
  so every edit of one dead letter carries the same id and the group applies at most one.
Replays go to the failing group's retry lane only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from consumers.lanes import first_retry_lane
from dlq import store
from dlq.record import corrected_record, replay_record
from producers import failpoints
from producers.errors import PublishValidationError
from producers.publisher import Publisher, parse_payload
from schemas.codec import header_map
from schemas.envelope import Envelope
from schemas.errors import DecodeError
from schemas.messages import Message
from schemas.registry import TYPE_PREFIX

SagaStatus = Callable[[str], Awaitable[str | None]]
HandledTypes = Callable[[str], frozenset[str] | None]
"""Group -> the message types (`io.sagaline.X`) it handles; None when unknown."""
Progress = Callable[[int, int], None]

REPLAYABLE = ("new", "replayed")
EDITABLE = ("new",)
CHUNK = 200  # entries per replay transaction
STALE_MARGIN_S = 3600.0
_EDIT_NAMESPACE = uuid.UUID("3d1b6c52-9a4f-4b7e-8d2e-64c71e0f5a10")


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
    skipped: list[int] = field(default_factory=list)  # held or changed by another action
    stale: list[int] = field(default_factory=list)  # older than the inbox remembers: not sent
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
    inbox_retention_s: float | None = None,
) -> ReplayReport:
    """Send the selected entries back to their group's retry lane (due at once), keeping key,
    value, event id and idempotency key; mark them replayed once the broker acknowledged.
    Default selection: status new (new or replayed when ids are given).

    A replay is safe because the group's inbox drops an event it applied — but only while
    it remembers: an entry whose last failure or replay is older than `inbox_retention_s`
    (less an hour's margin) is not sent and is reported `stale`."""
    if not flt.statuses:
        flt = store.Filter(**{**flt.__dict__, "statuses": REPLAYABLE if flt.ids else ("new",)})
    async with pool.acquire() as conn:
        entries = await store.select(conn, schema, flt, limit=limit)
    report = ReplayReport(dry_run=dry_run)
    if inbox_retention_s is not None:
        horizon = datetime.now(UTC) - timedelta(seconds=max(inbox_retention_s - STALE_MARGIN_S, 0))
        report.stale = [e.id for e in entries if _last_touched(e) < horizon]
        entries = [e for e in entries if _last_touched(e) >= horizon]
    for entry in entries:
        status = await saga_status(entry.saga_id) if saga_status and entry.saga_id else None
        lane = first_retry_lane(entry.dlt_topic)
        report.items.append(
            ReplayItem(
                entry.id, entry.consumer_group, lane, entry.event_id, entry.event_type, entry.saga_id, status
            )
        )
    started = time.monotonic()
    if dry_run:
        async with pool.acquire() as conn:
            await store.audit(
                conn, schema, actor=actor, action="replay", dry_run=True, flt=flt, count=len(entries),
                details={"ids": [e.id for e in entries][:1000]},
            )  # fmt: skip
        return report
    chunk = max(1, min(CHUNK, int(rate))) if rate else CHUNK  # about a second's work per transaction
    ids = [e.id for e in entries]
    for first in range(0, len(ids), chunk):
        wanted = ids[first : first + chunk]
        sent = await _replay_chunk(
            pool, publisher, schema, flt, wanted, actor=actor, pace=(started, report.sent, rate)
        )
        report.sent += len(sent)
        report.skipped += sorted(set(wanted) - set(sent))
        if progress:
            progress(first + len(wanted), len(ids))
    report.seconds = time.monotonic() - started
    return report


async def _replay_chunk(
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    schema: str,
    flt: store.Filter,
    ids: list[int],
    *,
    actor: str,
    pace: tuple[float, int, float | None],
) -> list[int]:
    """One transaction: lock what is still replayable (skipping entries another action
    holds), send, wait for every ack, mark replayed, audit. Returns the ids sent."""
    started, done, rate = pace
    async with pool.acquire() as conn, conn.transaction():
        held = store.Filter(ids=tuple(ids), statuses=flt.statuses)
        entries = await store.select(conn, schema, held, limit=len(ids), full=True, lock="skip")
        if not entries:
            return []  # every one held or changed by another action: nothing done, nothing to audit
        pending: list[tuple[asyncio.Future[Any], str]] = []
        for number, entry in enumerate(entries):
            if rate:
                await _pace(started, done + number, rate)
            record = replay_record(entry.id, entry.key, entry.value, entry.headers, datetime.now(UTC))
            lane = first_retry_lane(entry.dlt_topic)
            pending.append((await publisher.enqueue(lane, record), lane))
        for future, lane in pending:
            await Publisher.acknowledged(future, lane, "")
        failpoints.hit("dlq.after-send")
        sent = [e.id for e in entries]
        await store.mark(conn, schema, sent, "replayed")
        await store.audit(
            conn, schema, actor=actor, action="replay", dry_run=False, flt=flt, count=len(sent),
            details={"rate": rate, "ids": sent},
        )  # fmt: skip
    return sent


def _last_touched(entry: store.Entry) -> datetime:
    """When the group last saw this event: its last failure, or the last replay after it."""
    times = [t for t in (entry.last_failure, entry.replayed_at) if t is not None]
    return max(times) if times else (entry.indexed_at or datetime.now(UTC))


async def _pace(started: float, number: int, rate: float) -> None:
    delay = started + number / rate - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


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


def corrected_event_id(entry: store.Entry) -> str:
    """The one event id every corrected copy of this dead letter carries."""
    where = f"{entry.dlt_topic}:{entry.dlt_partition}:{entry.dlt_offset}"
    return str(uuid.uuid5(_EDIT_NAMESPACE, where))


async def edit(
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    schema: str,
    entry_id: int,
    payload: Any,
    *,
    actor: str,
    type_name: str | None = None,
    handled_types: HandledTypes | None = None,
) -> EditReport:
    """Validate a corrected payload, send it (linked to the original) to the failing group's
    retry lane, and mark the original resolved. Only a `new` entry can be edited: a replayed
    one may already have been applied. An edit changes payload fields only — not the type
    (when the record has one), the order id (record key), the idempotency key or the saga."""
    async with pool.acquire() as conn, conn.transaction():
        found = await store.select(conn, schema, store.Filter(ids=(entry_id,)), full=True, lock="wait")
        if not found:
            raise EditRefused(f"no dead letter {entry_id}")
        entry = found[0]
        if entry.status not in EDITABLE:
            why = (
                " (its original was replayed and may have been applied)" if entry.status == "replayed" else ""
            )
            raise EditRefused(f"dead letter {entry_id} is {entry.status}{why}: only new ones can be edited")
        corrected = _corrected(entry, payload, type_name, handled_types)
        lane = first_retry_lane(entry.dlt_topic)
        await publisher.send(
            lane, corrected_record(entry.id, entry.headers, corrected, datetime.now(UTC)), corrected.id
        )
        failpoints.hit("dlq.after-send")
        await store.mark(conn, schema, [entry.id], "resolved")
        details = {"new_event_id": corrected.id, "corrects": entry.event_id, "type": corrected.type}
        only = store.Filter(ids=(entry.id,))
        await store.audit(
            conn, schema, actor=actor, action="edit", dry_run=False, flt=only, count=1, details=details
        )
    return EditReport(entry.id, lane, corrected.id, entry.event_id)


def _corrected(
    entry: store.Entry, payload: Any, type_name: str | None, handled_types: HandledTypes | None
) -> Envelope[Message]:
    try:
        context = header_map(entry.headers)
    except DecodeError:
        context = {}
    original_type = context.get("ce_type")
    asked = None if type_name is None else TYPE_PREFIX + type_name.removeprefix(TYPE_PREFIX)
    if original_type and asked and asked != original_type:
        raise EditRefused(f"the dead letter is a {original_type}: an edit cannot change its type")
    name = original_type or asked
    if not name:
        raise EditRefused("the dead letter has no ce_type header: say which type the payload is (--type)")
    handled = handled_types(entry.consumer_group) if handled_types else None
    if handled is not None and name not in handled:
        raise EditRefused(
            f"group {entry.consumer_group} has no handler for {name}: the copy would be ignored"
        )
    try:
        message = parse_payload(name, payload)
    except PublishValidationError as exc:
        raise EditRefused(str(exc), exc.errors) from None
    if entry.record_key is not None and message.order_id != entry.record_key:
        raise EditRefused(f"order_id {message.order_id!r} is not the dead letter's key {entry.record_key!r}")
    original_key = context.get("ce_idempotencykey") or None
    new_key = getattr(message, "idempotency_key", None)
    if original_key and new_key != original_key:
        raise EditRefused("an edit cannot change the idempotency key")
    return Envelope(
        id=corrected_event_id(entry),
        source=context.get("ce_source") or "/sagaline/dlq-edit",
        saga_id=context.get("ce_sagaid") or message.order_id,
        causation_id=context.get("ce_causationid") or None,
        idempotency_key=original_key or new_key,
        traceparent=context.get("traceparent") or None,
        data=message,
    )


async def set_status(
    pool: asyncpg.Pool[Any], schema: str, flt: store.Filter, *, actor: str, status: str, dry_run: bool = False
) -> int:
    """Archive (or otherwise re-status) the selected entries; returns how many. Entries
    another action holds are passed over."""
    async with pool.acquire() as conn, conn.transaction():
        entries = await store.select(conn, schema, flt, limit=10_000_000, lock=None if dry_run else "skip")
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
