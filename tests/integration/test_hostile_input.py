"""Hostile records from a client that is not ours (kcat): nothing a producer sends can stall
a partition or the DLQ index, and nothing it sends disappears."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from consumers import lanes as h
from dlq import store
from dlq.indexer import Indexer, dlt_pattern
from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from schemas import messages as m
from schemas.codec import encode
from schemas.envelope import Envelope
from schemas.topics import TopicSpec
from schemas.values import Money
from tests.support import read_all, wait_until
from tests.worker_support import LedgerService, placed

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

# Lane headers as a producer might forge them: null, out of range, not numbers at all.
FORGED = [
    h.H_ORIGINAL_TOPIC,  # no '=': kcat sends a null value
    f"{h.H_ORIGINAL_PARTITION}=x",
    f"{h.H_ATTEMPTS}={'²' * 5000}",
    f"{h.H_FIRST_FAILURE}=9999-12-31T23:59:59-23:00",
    f"{h.H_REPLAY_OF}={'²' * 5000}",
    f"{h.H_DUE}=99999999999999999999",
    "ce_id",  # null
]


def kcat(bootstrap: str, topic: str, key: str, value: bytes, headers: list[str], tmp: Path) -> None:
    """Produce one record with kcat to partition 0, value from a file (sent whole)."""
    assert shutil.which("kcat"), "kcat is installed by tools/system-deps.sh"
    path = tmp / f"{uuid.uuid4().hex}.bin"
    path.write_bytes(value)
    args = ["kcat", "-P", "-b", bootstrap, "-t", topic, "-p", "0", "-k", key, "-X", "acks=all"]
    for header in headers:
        args += ["-H", header]
    subprocess.run([*args, str(path)], check=True, timeout=60, capture_output=True)


@pytest.fixture
async def service(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5, 1.0, 1.5))
    await service.setup()
    yield service
    await service.close()


async def test_forged_and_null_lane_headers_on_an_input_topic_never_stall_the_partition(
    service: LedgerService, kafka: KafkaConnection, tmp_path: Path
) -> None:
    """Setup: the ledger worker's input topic.
    Fault: kcat writes a record with a null kafka_dlt-original-topic header, one with forged
    out-of-range lane headers (both not events), and a valid event carrying the same forged
    headers; then our publisher sends an ordinary event to the same partition.
    Validate: the two non-events are dead-lettered with their true coordinates and lane
    headers of ours only; the forged-header event and the next event are applied."""
    bootstrap = kafka.bootstrap_servers
    kcat(bootstrap, service.topic, "o-null", b"not an event", [h.H_ORIGINAL_TOPIC, "x=y"], tmp_path)
    kcat(bootstrap, service.topic, "o-forged", b"{}", FORGED, tmp_path)
    valid = encode(Envelope.new(placed("o-valid"), "/tests/order"))
    ce_headers = [f"{name}={(value or b'').decode()}" for name, value in valid.headers]
    kcat(bootstrap, service.topic, "o-valid", valid.value, [*ce_headers, *FORGED[:-1]], tmp_path)
    await service.produce_raw(*_record("o-next"))
    await service.start()

    async def applied() -> bool:
        return await service.ledger_rows() == 2

    await wait_until(applied, timeout_s=60)
    dead = await read_all(kafka, service.lanes.dlt, at_least=2)
    await service.stop()
    assert await service.scalar("SELECT array_agg(order_id ORDER BY order_id) FROM {s}.ledger") == [
        "o-next",
        "o-valid",
    ]
    assert sorted(r.key for r in dead) == [b"o-forged", b"o-null"]
    for record in dead:
        names = [name for name, _ in record.headers]
        assert all(names.count(name) == 1 for name in h.LANE_HEADERS if name in names)
        headers = dict(record.headers)
        assert headers[h.H_ORIGINAL_TOPIC] == service.topic.encode()
        assert struct.unpack(">q", headers[h.H_ORIGINAL_OFFSET])[0] in (0, 1)
        assert headers[h.H_ATTEMPTS] == b"1"
        assert h.H_REPLAY_OF not in headers
    forged = next(r for r in dead if r.key == b"o-forged")
    assert ("ce_id", None) in forged.headers  # the producer's own headers are kept, null and all


async def test_a_malformed_value_is_dead_lettered_where_its_type_is_handled_and_ignored_elsewhere(
    service: LedgerService, kafka: KafkaConnection, tmp_path: Path
) -> None:
    """Setup: the ledger worker, which handles OrderPlaced and no other type.
    Fault: kcat writes an OrderConfirmed and an OrderPlaced whose contract headers are valid
    and whose values are not JSON; then our publisher sends an ordinary event.
    Validate: the OrderPlaced is dead-lettered as not JSON; the OrderConfirmed is ignored from
    its headers (not this group's to judge: the groups that handle it dead-letter it); the
    partition moves on and the ordinary event is applied."""
    bootstrap = kafka.bootstrap_servers
    confirmed = m.OrderConfirmed(order_id="o-confirmed", total=Money(amount_minor=1000, currency="EUR"))
    for order_id, message in (("o-confirmed", confirmed), ("o-placed", placed("o-placed"))):
        headers = encode(Envelope.new(message, "/tests/order")).headers
        ce_headers = [f"{name}={(value or b'').decode()}" for name, value in headers]
        kcat(bootstrap, service.topic, order_id, b"{not json", ce_headers, tmp_path)
    await service.produce_raw(*_record("o-next"))
    await service.start()

    async def applied() -> bool:
        return await service.ledger_rows() == 1

    await wait_until(applied, timeout_s=60)
    await service.stop()  # every failure of what it applied is routed before it stops
    dead = await read_all(kafka, service.lanes.dlt, at_least=1)
    assert [r.key for r in dead] == [b"o-placed"]
    assert dict(dead[0].headers)[h.H_EXCEPTION_FQCN].endswith(b"NotJson")
    assert await service.scalar("SELECT array_agg(order_id) FROM {s}.ledger") == ["o-next"]


def _record(order_id: str) -> tuple[bytes, bytes, list[tuple[str, bytes | None]]]:
    record = encode(Envelope.new(placed(order_id), "/tests/order"))
    assert record.key is not None
    return record.key, record.value, record.headers


async def test_forged_dead_letters_are_indexed_and_the_indexer_keeps_running(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path
) -> None:
    """Setup: a DLQ indexer over the `*.dlt` topics of one prefix.
    Fault: kcat writes dead letters with null and forged lane headers; our client writes
    one with NUL in its event id and key (PostgreSQL text refuses 0x00); then an ordinary one.
    Validate: all four are indexed, with out-of-range fields left empty, and the indexer is
    still running."""
    prefix = f"hx{unique}."
    dlt = f"{prefix}ledger.dlt"
    await ensure_topics(kafka, [TopicSpec(dlt, partitions=1)])
    schema = f"dlq_{unique}"
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    assert pool is not None
    async with pool.acquire() as conn:
        await store.install(conn, schema)
    stop = asyncio.Event()
    indexer = Indexer(kafka, pool, schema, group=f"{prefix}dlq-index", pattern=dlt_pattern(prefix))
    task = asyncio.create_task(indexer.run(stop))
    try:
        kcat(kafka.bootstrap_servers, dlt, "o-null", b"x", [h.H_ORIGINAL_TOPIC, "x=y"], tmp_path)
        kcat(kafka.bootstrap_servers, dlt, "o-forged", b"{}", FORGED, tmp_path)
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(
                dlt, b"{}", key=b"o-\x00", headers=[("ce_id", b"e\x00id")], partition=0
            )
            key, value, headers = _record("o-after")
            await producer.send_and_wait(dlt, value, key=key, headers=headers, partition=0)
        finally:
            await producer.stop()

        async def indexed() -> bool:
            assert not task.done(), "the indexer stopped"
            return int(await pool.fetchval(f'SELECT count(*) FROM "{schema}".dead_letters')) == 4

        await wait_until(indexed, timeout_s=60)
        rows = {
            r["record_key"]: r
            for r in await pool.fetch(f'SELECT * FROM "{schema}".dead_letters ORDER BY dlt_offset')
        }
        assert set(rows) == {"o-null", "o-forged", "o-\ufffd", "o-after"}
        assert rows["o-forged"]["replay_of"] is None
        assert rows["o-forged"]["attempts"] == 1
        assert rows["o-forged"]["source_partition"] is None
        assert rows["o-\ufffd"]["event_id"] == "e\ufffdid"
        async with pool.acquire() as conn:
            [entry] = await store.select(
                conn, schema, store.Filter(saga_id=None, ids=(rows["o-\ufffd"]["id"],)), full=True
            )
        assert entry.key == b"o-\x00"  # the raw record is kept as it came
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await pool.close()
