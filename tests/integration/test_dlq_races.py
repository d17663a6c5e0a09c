"""Operator actions on one dead letter racing each other, and dying between the send and
the mark: exactly one record per action that took effect, the change applied once, one
audit row per action actually taken. Real Kafka, PostgreSQL and `sagaline` processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers import lanes as h
from consumers.lanes import first_retry_lane
from dlq import actions, store
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from schemas.codec import Record
from tests.dlq_support import Operator
from tests.saga_support import SagaPlatform, order
from tests.support import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CHARGED = "SELECT balance_minor FROM {payment}.accounts WHERE customer_id = 'alice'"


@pytest.fixture
async def operator(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[Operator]:
    saga = SagaPlatform(kafka, postgres_dsn, unique, payment_timeout_s=300.0)
    await saga.setup([("alice", 100_000)], [("mug", 100)])
    op = Operator(saga)
    await op.start_indexer()
    yield op
    await op.close()
    await saga.close()


async def _dead_lettered_charge(operator: Operator, order_id: str) -> store.Entry:
    """An OrderPlaced the payment group dead-lettered (its table was missing), then fixed."""
    saga = operator.saga
    await saga.scalar("ALTER TABLE {payment}.accounts RENAME TO accounts_old")
    await saga.start()
    await saga.publish(order(order_id, items=[("mug", 2, 1500)]))
    [entry] = await operator.wait_entries(1, group=saga.config.group("payment"))
    await saga.scalar("ALTER TABLE {payment}.accounts_old RENAME TO accounts")
    return entry


def _cli(operator: Operator, *args: str, failpoint: str = "") -> subprocess.CompletedProcess[str]:
    saga = operator.saga
    env = {
        **os.environ,
        "SAGALINE_KAFKA_BOOTSTRAP": saga.kafka.bootstrap_servers,
        "SAGALINE_POSTGRES_DSN": saga.postgres_dsn,
        "SAGALINE_SAGA_PREFIX": saga.config.prefix,
        "SAGALINE_TOPIC_PREFIX": saga.config.topics.prefix,
        "SAGALINE_OPERATOR": "race-test",
        "SAGALINE_FAILPOINTS": failpoint,
    }
    return subprocess.run(
        [sys.executable, "-m", "sagaline", "dlq", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def _applied_once(operator: Operator, entry: store.Entry, kafka: KafkaConnection, sends: int) -> None:
    saga = operator.saga
    await saga.wait_status(entry.saga_id or "", "CONFIRMED")
    lane = await read_all(kafka, first_retry_lane(entry.dlt_topic), at_least=sends)
    assert len(lane) == sends
    assert len({dict(r.headers)["ce_id"] for r in lane}) == 1  # every send carried one event id
    assert await saga.scalar(CHARGED) == 97_000
    assert await saga.scalar("SELECT count(*) FROM {payment}.payments") == 1


async def test_concurrent_edits_and_replays_of_one_entry_send_exactly_one_record(
    operator: Operator, kafka: KafkaConnection
) -> None:
    """Setup: one dead-lettered charge, its cause fixed.
    Fault: two edits and two replays of it start at once, each on its own connection.
    Validate: one record reaches the retry lane, the order is charged once, one action is
    audited, the others were refused or found nothing to do."""
    entry = await _dead_lettered_charge(operator, "o-race")
    payload = json.loads(entry.value or b"")

    async def edit() -> str:
        async with Publisher(kafka, source="/sagaline/dlq") as publisher:
            try:
                await actions.edit(operator.pool, publisher, operator.schema, entry.id, payload, actor="a")
            except actions.EditRefused as refused:
                return f"refused: {refused}"
            return "edited"

    async def replay() -> str:
        # status new, as `dlq replay` selects by default: a replay by id also re-sends a
        # `replayed` entry (harmless, the inbox drops it), so two of them that happen to run
        # one after the other would both send; the race under test is over the new entry
        report = await operator.replay(store.Filter(ids=(entry.id,), statuses=("new",)))
        return f"replayed {report.sent}"

    results = await asyncio.gather(edit(), replay(), edit(), replay())
    done = [r for r in results if r in ("edited", "replayed 1")]
    assert len(done) == 1, results
    await _applied_once(operator, entry, kafka, sends=1)
    audit = [a for a in await operator.audit() if not a["dry_run"]]
    assert len(audit) == 1
    status = (await operator.entries(ids=(entry.id,)))[0].status
    assert status == ("resolved" if done == ["edited"] else "replayed")


@pytest.mark.parametrize("action", ["edit", "replay"])
async def test_an_action_killed_between_send_and_mark_then_repeated_applies_once(
    operator: Operator, kafka: KafkaConnection, tmp_path: Path, action: str
) -> None:
    """Setup: one dead-lettered charge, its cause fixed.
    Fault: `sagaline dlq edit|replay` dies (failpoint dlq.after-send=exit) after the broker
    acknowledged the record and before the entry is marked; the operator runs it again.
    Validate: two records with one event id went out, the order is charged once, the entry
    is marked, and only the completed action is audited."""
    entry = await _dead_lettered_charge(operator, f"o-kill-{action}")
    payload = tmp_path / "fixed.json"
    payload.write_bytes(entry.value or b"")
    args = (
        ["edit", str(entry.id), "--file", str(payload)]
        if action == "edit"
        else ["replay", "--id", str(entry.id)]
    )

    killed = _cli(operator, *args, failpoint="dlq.after-send=exit")
    assert killed.returncode == 137, killed.stderr
    assert (await operator.entries(ids=(entry.id,)))[0].status == "new"
    assert [a for a in await operator.audit() if not a["dry_run"]] == []

    again = _cli(operator, *args)
    assert again.returncode == 0, again.stderr
    await _applied_once(operator, entry, kafka, sends=2)
    assert (await operator.entries(ids=(entry.id,)))[0].status == (
        "resolved" if action == "edit" else "replayed"
    )
    audit = [(a["action"], a["actor"], a["count"]) for a in await operator.audit() if not a["dry_run"]]
    assert audit == [(action, "race-test", 1)]


async def test_an_edit_changes_payload_fields_only_and_never_a_replayed_entry(
    operator: Operator, kafka: KafkaConnection, tmp_path: Path
) -> None:
    """Setup: a dead-lettered charge (an OrderPlaced), and a dead letter with no ce_type.
    Fault: edits that change the type, the order id, name a type the group has no handler
    for, or edit an entry already replayed.
    Validate: each is refused with its reason and nothing is sent."""
    entry = await _dead_lettered_charge(operator, "o-rules")
    payload = json.loads(entry.value or b"")
    original = tmp_path / "original.json"
    original.write_text(json.dumps(payload))
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps({**payload, "order_id": "o-other"}))

    cases = [
        (["--type", "PlaceOrder", "--file", str(original)], "cannot change its type"),
        (["--file", str(moved)], "is not the dead letter's key"),
    ]
    for args, reason in cases:
        refused = _cli(operator, "edit", str(entry.id), *args)
        assert refused.returncode == 1
        assert reason in refused.stderr

    group = entry.consumer_group
    untyped_payload = {"order_id": "o-untyped", "total": {"amount_minor": 1, "currency": "EUR"}}
    async with Publisher(kafka, source="/tests") as publisher:
        await publisher.send(entry.dlt_topic, _untyped(group, untyped_payload), "x")
    [untyped] = await operator.wait_entries(1, saga_id="o-untyped")
    confirmed = tmp_path / "confirmed.json"
    confirmed.write_text(json.dumps(untyped_payload))
    refused = _cli(operator, "edit", str(untyped.id), "--type", "OrderConfirmed", "--file", str(confirmed))
    assert refused.returncode == 1
    assert "has no handler for io.sagaline.OrderConfirmed" in refused.stderr

    assert (await operator.replay(store.Filter(ids=(entry.id,)))).sent == 1
    refused = _cli(operator, "edit", str(entry.id), "--file", str(original))
    assert refused.returncode == 1
    assert "is replayed (its original was replayed and may have been applied)" in refused.stderr
    await _applied_once(operator, entry, kafka, sends=1)  # only the replay went out


def _untyped(group: str, payload: dict[str, object]) -> Record:
    """A dead letter whose producer sent no CloudEvents headers at all."""
    headers: list[tuple[str, bytes | None]] = [
        (h.H_ORIGINAL_GROUP, group.encode()),
        (h.H_SAGA_ID, b"o-untyped"),
        (h.H_EXCEPTION_FQCN, b"schemas.errors.MissingHeader"),
    ]
    return Record(b"o-untyped", json.dumps(payload).encode(), headers)
