"""`sagaline bench`: the whole platform under load, with the ceilings it is judged against
measured in the same run on the same machine.

Phases, each on its own fresh topics and schemas (a run token in every prefix):

1. **Ceilings**: Kafka's own ProducerPerformance/ConsumerPerformance and a PostgreSQL
   commit-rate probe (benchmarks.saga).
2. **Sustained**: a 3,000-order burst calibrates, then enough orders for `seconds` at that
   rate (and a margin) are published at once; sagas/s is completions over the time to drain
   them. Beside it, where the cost goes: CPU-seconds per saga of every process (from /proc:
   services, broker, PostgreSQL backends), SQL statements and transactions per saga
   (pg_stat_statements, pg_stat_database), Kafka records per saga (end offsets of the run's
   topics), and apart from them the load generator's own CPU (this process: publishing the
   orders, watching for their end), which shares the machine. The tracker, a projection
   off the saga's path, may trail the saga under load: the measured window ends when it
   has caught up, and how far it trailed is reported, with the sagas/s counted until
   then; the latency phase offers shares of that rate.
3. **Latency**, open loop (each order published at its scheduled time, whatever the system
   is doing): p50/p95/p99 at 25/50/75% of the sustained rate and at 10 orders/s.
4. **Scaling**: the sustained phase again with 2 processes per service, and with 12
   partitions.
5. **Tracing**: the sustained phase again with every service exporting every span (100%
   sampling) over OTLP/HTTP to a local receiver (sagaline.otlp_sink), against the base
   layout's run with tracing off: what tracing costs.

6. **Latency ceiling** (with the ceilings): the saga's four hops as three bare relay
   processes (sagaline.chain) at the offered rate of the half-load latency run, Kafka only
   and with one transaction a hop, each with the saga's p99 against its own.

Every run checks the saga invariants (sagas.invariants) for its orders, then drops its
schemas and topics (`discard_run`) unless asked to keep them: a sustained phase writes up to a
gigabyte to the stack, and a stack that keeps every run fills the disk.
"""

from __future__ import annotations

import functools
import os
import platform as host
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from producers.admin import delete_topics, ensure_topics, start_admin
from producers.connection import KafkaConnection
from sagaline.bootstrap import Endpoints, create_pool, endpoints, local_stack, saga_config
from sagaline.ceilings import kafka_perf, postgres_commit_rate
from sagaline.chain import ChainOptions, run_chain
from sagaline.costs import CpuSample, pg_counters, postmaster_pid
from sagaline.demo import DemoOptions, DemoResult, measure_hops, run_demo
from sagaline.localstack.kafka import KAFKA_VERSION
from sagaline.localstack.process import read_pid
from sagaline.otlp_sink import OtlpSink
from sagaline.platform import Platform
from sagaline.settings import Settings

Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    seconds: float = 60.0  # the sustained phase's target length
    latency_seconds: float = 20.0  # each open-loop latency point
    loads: tuple[float, ...] = (0.25, 0.5, 0.75)  # of the sustained rate
    idle_rate: float = 10.0
    chain_load: float = 0.5  # the latency ceiling (sagaline.chain) runs at this share of sustained
    scaling: bool = True
    ceilings: bool = True
    tracing: bool = True
    keep: bool = False  # leave each run's schemas and topics on the stack


@dataclass(frozen=True)
class Layout:
    replicas: int
    partitions: int
    tracing: bool = False  # every span exported, 100% sampled, to a local OTLP receiver

    @property
    def label(self) -> str:
        processes = f"{self.replicas} process{'es' if self.replicas > 1 else ''}"
        traced = ", tracing on" if self.tracing else ""
        return f"{processes}/service, {self.partitions} partitions{traced}"


async def run_bench(settings: Settings, options: BenchOptions, say: Say) -> dict[str, Any]:
    ends = await endpoints(settings, start_local=True)
    report: dict[str, Any] = {"environment": _environment(settings)}
    if options.ceilings:
        say("ceilings: Kafka producer/consumer perf tools, PostgreSQL commit probe")
        report["ceilings"] = await _ceilings(settings, ends)
    base = Layout(1, settings.topic_partitions)
    layouts = [base]
    if options.tracing:
        layouts.append(Layout(1, base.partitions, tracing=True))
    if options.scaling:
        layouts += [Layout(2, base.partitions), Layout(1, base.partitions * 2)]
    report["sustained"] = []
    for layout in layouts:
        with_latency = layout == base
        phase = await _phase(settings, ends, layout, options, say, latency=with_latency)
        report["sustained"].append(phase["sustained"])
        if with_latency:
            report["latency"] = phase["latency"]
    if options.ceilings and report.get("latency"):
        report["latency_ceilings"] = await _chain_ceilings(settings, ends, report["latency"], options, say)
    first = report["sustained"][0]["sagas_per_s"]
    for row in report["sustained"]:
        row["ratio_to_first"] = round(row["sagas_per_s"] / first, 2) if first else None
    report["ok"] = all(r["invariants_ok"] for r in [*report["sustained"], *report.get("latency", [])])
    return report


def _environment(settings: Settings) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": host.python_version(),
        "aiokafka": aiokafka.__version__,
        "asyncpg": asyncpg.__version__,
        "kafka": KAFKA_VERSION,
        "settings": "fsync on, synchronous_commit on, acks=all, idempotent producer",
    }


async def _ceilings(settings: Settings, ends: Endpoints) -> dict[str, float]:
    bootstrap = settings.kafka_bootstrap or local_stack(settings).kafka_bootstrap()
    ceilings = await kafka_perf(settings, ends.kafka, bootstrap)
    ceilings["postgres_commits_per_s"] = round(await postgres_commit_rate(ends.postgres_dsn))
    return ceilings


async def _chain_ceilings(
    settings: Settings, ends: Endpoints, latency: list[dict[str, Any]], options: BenchOptions, say: Say
) -> list[dict[str, Any]]:
    """The saga path's latency ceiling (sagaline.chain) at the offered rate of the latency row
    nearest `options.chain_load` of the sustained rate, Kafka only and with a transaction a
    hop, each against the saga's p99 at that rate."""
    nearest = min(range(len(options.loads)), key=lambda i: abs(options.loads[i] - options.chain_load))
    row = latency[nearest]  # the rows follow `options.loads`, then the idle rate
    brokers, postmaster = _stack_pids(settings)
    ceilings = []
    for transactional in (False, True):
        token = f"b{uuid.uuid4().hex[:6]}"
        chain = ChainOptions(
            rate=row["orders_per_s"],
            seconds=options.latency_seconds,
            transactional=transactional,
            partitions=settings.topic_partitions,
            replication=settings.topic_replication,
        )
        say(
            f"latency ceiling at {row['offered']} ({chain.rate:.0f}/s):"
            f" the saga's four hops as bare relays{', a transaction a hop' if transactional else ''}"
        )
        try:
            ceiling = await run_chain(ends, chain, token, brokers, postmaster)
        finally:
            if not options.keep:
                await discard_run(ends, token)
        if ceiling["records"] < ceiling["published"]:
            say(f"latency ceiling: {ceiling['published'] - ceiling['records']} records did not arrive")
        ceiling["offered"] = row["offered"]
        ceiling["saga_p99_ratio"] = round(row["p99"] / ceiling["p99"], 1) if ceiling.get("p99") else None
        ceilings.append(ceiling)
    return ceilings


def _stack_pids(settings: Settings) -> tuple[list[int], int | None]:
    """The local stack's broker processes and PostgreSQL's postmaster, whose CPU a run is
    charged (none when Kafka and PostgreSQL run elsewhere)."""
    stack = local_stack(settings)
    brokers = [pid for pid in (read_pid(node.pid_file) for node in stack.kafka_nodes()) if pid]
    return brokers, postmaster_pid(stack.postgres.data_dir)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Settings for this phase, seen by `Settings()` and by the service processes it starts."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def _phase(
    base_settings: Settings,
    ends: Endpoints,
    layout: Layout,
    options: BenchOptions,
    say: Say,
    *,
    latency: bool,
) -> dict[str, Any]:
    token = f"b{uuid.uuid4().hex[:6]}"
    overrides = {
        "SAGALINE_SAGA_PREFIX": f"{token}_",
        "SAGALINE_TOPIC_PREFIX": f"{token}.",
        "SAGALINE_TOPIC_PARTITIONS": str(layout.partitions),
        **ends.environment(),
    }
    sink = OtlpSink()
    if layout.tracing:
        await sink.start()
        overrides |= {
            "SAGALINE_TRACES_EXPORTER": "otlp",
            "SAGALINE_TRACES_SAMPLE_RATIO": "1",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{sink.endpoint}/v1/traces",
        }
    with _environ(overrides):
        settings = Settings()
        config = saga_config(settings)
        await ensure_topics(ends.kafka, config.topics.specs())
        platform = Platform(
            ends, settings.state_dir / "logs" / token, settings.metrics_port, replicas=layout.replicas
        )
        platform.start()
        pool = await create_pool(settings, ends.postgres_dsn)
        costed = functools.partial(_costed, ends, pool, config, platform, token, settings)
        try:
            say(f"{layout.label}: starting {len(platform.children)} processes")
            await platform.wait_ready()
            # a burst drains faster the larger it is (bigger batches): size the measured one
            # from a 3,000-order burst, with a margin, so that it lasts at least `seconds`
            calibration = await run_demo(ends.kafka, pool, config, DemoOptions(orders=3000, seed=1))
            orders = max(3000, int(calibration.sagas_per_s * options.seconds * 1.3))
            say(
                f"{layout.label}: calibrated at {calibration.sagas_per_s:.0f} sagas/s;"
                f" {orders} orders at once"
            )
            result, costs = await costed(
                DemoOptions(orders=orders, seed=7, timeout_s=900, tracker_trail=True)
            )
            sustained = {
                "orders": result.orders,
                "seconds": round(result.seconds, 1),
                "sagas_per_s": round(result.sagas_per_s, 1),
                **costs,
                "invariants_ok": result.ok,
                "tracker_trail_s": _rounded(result.tracker_trail_s),
                # the whole platform's rate: until the tracker has caught up too
                "sagas_per_s_with_tracker": round(
                    (result.orders - result.open_sagas) / (result.seconds + (result.tracker_trail_s or 0.0)),
                    1,
                ),
                "replicas": layout.replicas,
                "partitions": layout.partitions,
                "tracing": layout.tracing,
            }
            say(
                f"{layout.label}: {sustained['sagas_per_s']} sagas/s over {sustained['seconds']} s,"
                f" {sustained['cpu_ms_per_saga_total']} ms CPU/saga"
            )
            points: list[dict[str, Any]] = []
            if latency:
                rate = sustained["sagas_per_s_with_tracker"]  # what all of the platform keeps up with
                offered = [(f"{round(load * 100)}% of sustained", load * rate) for load in options.loads]
                for label, per_s in [*offered, (f"{options.idle_rate:g}/s", options.idle_rate)]:
                    count = max(20, int(per_s * options.latency_seconds))
                    say(f"latency at {label}: {count} orders at {per_s:.0f}/s, open loop")
                    result, costs = await costed(
                        DemoOptions(orders=count, rate=per_s, seed=3, timeout_s=600, tracker_trail=True)
                    )
                    points.append(_latency_row(label, per_s, result, costs))
        finally:
            await pool.close()
            platform.stop()
            await sink.stop()
            if not options.keep:
                dropped = await discard_run(ends, token)
                say(f"{layout.label}: dropped {dropped.schemas} schemas, {dropped.topics} topics ({token})")
    if layout.tracing:
        sustained["otlp_exports"] = {"requests": sink.requests, "bytes": sink.bytes}
    return {"sustained": sustained, "latency": points}


@dataclass(frozen=True)
class Discarded:
    schemas: int
    topics: int


async def discard_run(ends: Endpoints, token: str) -> Discarded:
    """Drop everything one run made on the stack: the schemas named `<token>_…` and the topics
    named `<token>.…` (saga topics, retry lanes, dead-letter topics). Its consumer groups go
    with their topics' offsets (the broker deletes an empty group that has none). Call it
    once the run's processes have stopped."""
    if not token.isalnum():
        raise ValueError(f"a run token is letters and digits only, got {token!r}")
    conn = await asyncpg.connect(ends.postgres_dsn)
    try:
        schemas = [
            row["nspname"]
            for row in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", f"{token}_"
            )
        ]
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
    admin = await start_admin(ends.kafka)
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"{token}.")]
        await delete_topics(admin, topics)
    finally:
        await admin.close()
    return Discarded(schemas=len(schemas), topics=len(topics))


async def _costed(
    ends: Endpoints,
    pool: asyncpg.Pool[Any],
    config: Any,
    platform: Platform,
    token: str,
    settings: Settings,
    demo: DemoOptions,
) -> tuple[DemoResult, dict[str, Any]]:
    """Run the demo and measure, from outside, what its sagas cost: CPU per process from
    /proc, PostgreSQL statements and transactions, Kafka records — each per completed saga.
    The window opens once the demo has seeded its accounts and stock, as it publishes its
    first order, and closes once its last saga has ended and the tracker's projection shows
    every saga ended (`tracker_trail_s`: how long after the saga path): a projection that
    falls behind under load must not leave its work out of the cost. The load generator
    (this process: the demo's publishing and its polling for the end) shares the machine;
    its CPU is reported apart, not in the platform's total."""
    groups: dict[str, list[int]] = {}
    for child in platform.children:
        groups.setdefault(child.service, []).append(child.process.pid)
    groups["kafka"], postmaster = _stack_pids(settings)
    records_before = await _records(ends.kafka, token)
    meter = _Meter(pool, groups, postmaster)
    result = await run_demo(ends.kafka, pool, config, demo, began=meter.open, ended=meter.close)
    records = await _records(ends.kafka, token) - records_before
    async with pool.acquire() as conn:
        await measure_hops(conn, config, result)  # after the measured window: not part of the cost
    done = max(result.orders - result.open_sagas, 1)
    return result, {
        "cpu_ms_per_saga": {name: round(1000 * s / done, 2) for name, s in sorted(meter.cpu.items())},
        "cpu_ms_per_saga_total": round(1000 * sum(meter.cpu.values()) / done, 2),
        "load_generator_cpu_ms_per_saga": round(1000 * meter.own_cpu / done, 2),
        **{f"{name}_per_saga": round(value / done, 1) for name, value in meter.counters.items()},
        "kafka_records_per_saga": round(records / done, 1),
    }


class _Meter:
    """CPU per process, this process's own CPU and PostgreSQL's counters over a window."""

    def __init__(self, pool: asyncpg.Pool[Any], groups: dict[str, list[int]], postmaster: int | None) -> None:
        self.pool, self.groups, self.postmaster = pool, groups, postmaster
        self.cpu: dict[str, float] = {}  # what the window measured, once closed
        self.counters: dict[str, int] = {}
        self.own_cpu = 0.0
        self._counters: dict[str, int] = {}  # as the window opened
        self._cpu = CpuSample({})
        self._own = 0.0

    async def open(self) -> None:
        async with self.pool.acquire() as conn:
            self._counters = await pg_counters(conn)
        self._cpu = CpuSample.take(self.groups, self.postmaster)
        self._own = time.process_time()

    async def close(self) -> None:
        self.own_cpu = time.process_time() - self._own
        self.cpu = CpuSample.take(self.groups, self.postmaster).minus(self._cpu)
        async with self.pool.acquire() as conn:
            now = await pg_counters(conn)
        self.counters = {k: v - self._counters.get(k, 0) for k, v in now.items()}


def _latency_row(label: str, rate: float, result: DemoResult, costs: dict[str, Any]) -> dict[str, Any]:
    return {
        "offered": label,
        "orders_per_s": round(rate, 1),
        "orders": result.orders,
        **{p: result.latency_ms.get(p) for p in ("p50", "p95", "p99")},
        "by_second_ms": result.by_second_ms,
        "hops_ms": result.hops_ms,
        "cpu_ms_per_saga_total": costs["cpu_ms_per_saga_total"],
        "statements_per_saga": costs.get("statements_per_saga"),
        "transactions_per_saga": costs.get("transactions_per_saga"),
        "invariants_ok": result.ok,
        "tracker_trail_s": _rounded(result.tracker_trail_s),
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


async def _records(kafka: KafkaConnection, token: str) -> int:
    """Records on every topic of this run (its saga topics, retry lanes, dead-letter topics)."""
    admin = await start_admin(kafka)
    try:
        topics = [t for t in await admin.list_topics() if token in t]
        described = await admin.describe_topics(topics) if topics else []
    finally:
        await admin.close()
    partitions = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    if not partitions:
        return 0
    consumer = AIOKafkaConsumer(**kafka.client_kwargs())
    await consumer.start()
    try:
        return int(sum((await consumer.end_offsets(partitions)).values()))
    finally:
        await consumer.stop()
