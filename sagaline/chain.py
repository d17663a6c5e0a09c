"""A latency ceiling for the saga's path, measured in the same run on the same machine: the
saga's four hops (the request to the order service, then payment, inventory and the order
service again) as a chain of three relay processes that do nothing but pass a record on.

    ingress ─▶ order ─▶ orders ─▶ payment ─▶ payments ─▶ inventory ─▶ inventory ─▶ order ─▶ done

Each relay fetches whatever is there (no linger), sends it on (acks=all, idempotent) and
commits the fetch's offsets once the sends are acknowledged. With `transactional`, each
fetch is also the least a participant with our guarantees does (docs/consumers.md):
one transaction that claims the records' ids in an inbox, loads and saves one state row
per key and stages the records in an outbox; the sends after its commit; one statement
that marks them sent; the offsets last. No decoding, no rules, no tracker, one record in
and one out per hop (the saga consumes and produces more): what the machine allows for
the path's shape, not a rival implementation.

A load generator in this process publishes at a fixed rate on the demo's 10 ms grid and
times each record from its publication to its arrival on `done`, one fetch later than the
demo's end of a saga (the order row's commit): the ceiling is, if anything, pessimistic.

    python -m sagaline.chain ROLE PREFIX SCHEMA    one relay (SCHEMA `-`: Kafka only)
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from asyncio.subprocess import PIPE
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from producers.publisher import PASS_SENDER, SAFE_PRODUCER_DEFAULTS
from sagaline.bootstrap import Endpoints, endpoints
from sagaline.costs import CpuSample
from sagaline.demo import by_second, due_s, percentiles
from sagaline.runtime import run_service, stop_event_on_signals
from sagaline.settings import Settings
from schemas.topics import TopicSpec

ROUTES: dict[str, dict[str, str]] = {  # role -> {topic it reads: topic it sends to}
    "order": {"ingress": "orders", "inventory": "done"},
    "payment": {"orders": "payments"},
    "inventory": {"payments": "inventory"},
}
TOPICS = ("ingress", "orders", "payments", "inventory", "done")
RECORD_BYTES = 400  # about a saga event's value
MAX_RECORDS = 500  # a fetch's most, as the workers'
READY = b"ready\n"
READY_TIMEOUT_S = 60.0
ARRIVAL_TIMEOUT_S = 60.0  # after the last publication


@dataclass(frozen=True)
class ChainOptions:
    rate: float  # records a second, open loop
    seconds: float
    transactional: bool
    partitions: int = 6
    replication: int | None = None  # as the saga's topics: 3, capped to the brokers there are


def tables_sql(schema: str, role: str) -> str:
    return f"""
        CREATE TABLE "{schema}".{role}_inbox (event_id text PRIMARY KEY);
        CREATE TABLE "{schema}".{role}_state (key text PRIMARY KEY, applied int NOT NULL);
        CREATE TABLE "{schema}".{role}_outbox (
            id bigserial PRIMARY KEY, topic text NOT NULL, key bytea, value bytea NOT NULL,
            sent boolean NOT NULL DEFAULT false)"""


class _Unit:
    """A relay's transactional unit of work on its own connection, for one fetch."""

    def __init__(self, conn: asyncpg.Connection[Any], schema: str, role: str) -> None:
        table = f'"{schema}".{role}'
        self.conn = conn
        self.claim = f"INSERT INTO {table}_inbox SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
        self.load = f"SELECT key, applied FROM {table}_state WHERE key = ANY($1::text[]) FOR UPDATE"
        self.save = (
            f"INSERT INTO {table}_state SELECT k, 1 FROM unnest($1::text[]) AS k"
            f" ON CONFLICT (key) DO UPDATE SET applied = {table}_state.applied + 1"
        )
        self.stage = (
            f"INSERT INTO {table}_outbox (topic, key, value)"
            " SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) RETURNING id"
        )
        self.mark = f"UPDATE {table}_outbox SET sent = true WHERE id = ANY($1::bigint[])"

    async def commit(self, records: list[Any], out: list[str]) -> list[int]:
        """Claim, load, save and stage `records` (sent to `out`, one topic each) in one
        transaction; the staged rows' ids."""
        keys = sorted({r.key.decode() for r in records})  # one lock order for every unit
        async with self.conn.transaction():
            await self.conn.execute(self.claim, [f"{r.topic}/{r.partition}/{r.offset}" for r in records])
            await self.conn.fetch(self.load, keys)
            await self.conn.execute(self.save, keys)
            keyed = [r.key for r in records]
            rows = await self.conn.fetch(self.stage, out, keyed, [r.value for r in records])
        return [row["id"] for row in rows]


async def relay(kafka: KafkaConnection, dsn: str, role: str, prefix: str, schema: str | None) -> None:
    """One relay until SIGTERM; prints READY on stdout once it holds its partitions."""
    stop = stop_event_on_signals()
    routes = {prefix + source: prefix + target for source, target in ROUTES[role].items()}
    consumer = AIOKafkaConsumer(
        *routes,
        **kafka.client_kwargs(),
        group_id=f"{prefix}{role}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_min_bytes=1,
        fetch_max_wait_ms=500,
        max_poll_records=MAX_RECORDS,
    )
    producer = AIOKafkaProducer(**kafka.client_kwargs(), **{**SAFE_PRODUCER_DEFAULTS, **PASS_SENDER})
    conn = await asyncpg.connect(dsn) if schema else None
    unit = _Unit(conn, schema, role) if conn is not None and schema else None
    await consumer.start()
    await producer.start()
    ready = False
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100 if not ready else 1000)
            if not ready and consumer.assignment():
                ready = True
                sys.stdout.buffer.write(READY)
                sys.stdout.flush()
            records = [record for part in batch.values() for record in part]
            if not records:
                continue
            out = [routes[record.topic] for record in records]
            staged = await unit.commit(records, out) if unit is not None else []
            sends = [
                await producer.send(topic, record.value, key=record.key)
                for topic, record in zip(out, records, strict=True)
            ]
            await asyncio.gather(*sends)
            if unit is not None:
                await unit.conn.execute(unit.mark, staged)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        if conn is not None:
            await conn.close()


async def run_chain(
    ends: Endpoints, options: ChainOptions, token: str, brokers: list[int], postmaster: int | None
) -> dict[str, Any]:
    """Start the three relays (topics `<token>.chain…`, tables in schema `<token>_chain`; the
    caller drops them: `bench.discard_run`), publish `rate` * `seconds` records, and report
    their latency and what the run cost each process, per record through the chain."""
    prefix, schema = f"{token}.chain.", f"{token}_chain"
    specs = [TopicSpec(prefix + topic, options.partitions, options.replication) for topic in TOPICS]
    await ensure_topics(ends.kafka, specs)
    if options.transactional:
        conn = await asyncpg.connect(ends.postgres_dsn)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            for role in ROUTES:
                await conn.execute(tables_sql(schema, role))
        finally:
            await conn.close()
    env = {**os.environ, **ends.environment()}
    relays = []
    for role in ROUTES:
        command = ["-m", "sagaline.chain", role, prefix, schema if options.transactional else "-"]
        spawned = asyncio.create_subprocess_exec(sys.executable, *command, env=env, stdout=PIPE)
        relays.append(await spawned)
    try:
        for process in relays:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
            if line != READY:
                raise RuntimeError(f"a chain relay exited before it was ready (exit {process.returncode})")
        groups = {"relays": [p.pid for p in relays], "kafka": brokers}
        before = CpuSample.take(groups, postmaster)
        own = time.process_time()
        published = max(1, int(options.rate * options.seconds))
        timed = await _load(ends.kafka, prefix, options.rate, published)
        cpu = CpuSample.take(groups, postmaster).minus(before)
        own = time.process_time() - own
    finally:
        for process in relays:
            if process.returncode is None:
                process.terminate()
        for process in relays:
            await process.wait()
    done = max(len(timed), 1)
    first = min((at for at, _ in timed), default=0.0)
    return {
        "transactional": options.transactional,
        "offered_per_s": round(options.rate, 1),
        "published": published,
        "records": len(timed),  # arrived on `done`; fewer than published if a relay failed
        **percentiles(sorted(ms for _, ms in timed)),
        "by_second_ms": by_second([(at - first, ms) for at, ms in timed]),
        "cpu_ms_per_record": {name: round(1000 * s / done, 2) for name, s in sorted(cpu.items())},
        "load_generator_cpu_ms_per_record": round(1000 * own / done, 2),
    }


async def _load(kafka: KafkaConnection, prefix: str, rate: float, count: int) -> list[tuple[float, float]]:
    """Publish `count` records at `rate` on the demo's grid, each stamped with its publication
    time; (when published, latency ms) for each that arrived on `done`."""
    producer = AIOKafkaProducer(**kafka.client_kwargs(), **SAFE_PRODUCER_DEFAULTS)
    sink = AIOKafkaConsumer(
        prefix + "done", **kafka.client_kwargs(), auto_offset_reset="earliest", fetch_max_wait_ms=500
    )
    await producer.start()
    await sink.start()
    arrived: list[tuple[float, float]] = []

    async def receive() -> None:
        while len(arrived) < count:
            batch = await sink.getmany(timeout_ms=1000)
            now = time.time()
            for part in batch.values():
                for record in part:
                    (sent,) = struct.unpack_from(">d", record.value)
                    arrived.append((sent, 1000 * (now - sent)))

    receiving = asyncio.create_task(receive())
    try:
        pad = b"\0" * (RECORD_BYTES - 8)
        sends = []
        started = time.monotonic()
        for number in range(count):
            await asyncio.sleep(max(0.0, started + due_s(number, rate) - time.monotonic()))
            value = struct.pack(">d", time.time()) + pad
            sends.append(await producer.send(prefix + "ingress", value, key=b"%d" % number))
        await asyncio.gather(*sends)
        await asyncio.wait_for(asyncio.shield(receiving), ARRIVAL_TIMEOUT_S)
    except TimeoutError:
        pass  # what arrived is reported; the count says what did not
    finally:
        receiving.cancel()
        await producer.stop()
        await sink.stop()
    return arrived


async def _relay_main(role: str, prefix: str, schema: str) -> None:
    ends = await endpoints(Settings(), start_local=False)
    await relay(ends.kafka, ends.postgres_dsn, role, prefix, None if schema == "-" else schema)


if __name__ == "__main__":
    role, prefix, schema = sys.argv[1:4]
    if role not in ROUTES:
        raise SystemExit(f"sagaline.chain: no role {role!r}; one of {', '.join(ROUTES)}")
    run_service(_relay_main(role, prefix, schema), Settings().event_loop)
