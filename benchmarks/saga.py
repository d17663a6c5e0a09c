"""Completed sagas per second and saga latency, next to ceilings measured in the same run on
the same machine: Kafka's own producer and consumer perf tools (from the cached jars) and a
PostgreSQL commit-rate probe.

    python -m benchmarks saga          (SAGALINE_BENCH_ORDERS, default 1000)

Starts the local stack and the services as `sagaline demo` does.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from producers.admin import ensure_topics
from sagaline.bootstrap import create_pool, endpoints, local_stack, saga_config
from sagaline.ceilings import kafka_perf, postgres_commit_rate
from sagaline.costs import CpuSample, pg_counters, postmaster_pid
from sagaline.demo import DemoOptions, run_demo
from sagaline.localstack.process import read_pid
from sagaline.platform import Platform
from sagaline.settings import Settings


async def run_async(orders: int) -> dict[str, Any]:
    settings = Settings()
    ends = await endpoints(settings, start_local=True)
    bootstrap = settings.kafka_bootstrap or local_stack(settings).kafka_bootstrap()
    ceilings = await kafka_perf(settings, ends.kafka, bootstrap)
    ceilings["postgres_commits_per_s"] = await postgres_commit_rate(ends.postgres_dsn)
    config = saga_config(settings)
    await ensure_topics(ends.kafka, config.topics.specs())
    platform = Platform(ends, settings.state_dir / "logs", settings.metrics_port)
    platform.start()
    pool = await create_pool(settings, ends.postgres_dsn)
    stack = local_stack(settings)
    try:
        await platform.wait_ready()
        groups = {child.name: [child.process.pid] for child in platform.children}
        brokers = [read_pid(node.pid_file) for node in stack.kafka_nodes()]
        groups["kafka"] = [pid for pid in brokers if pid is not None]
        postmaster = postmaster_pid(stack.postgres.data_dir)
        async with pool.acquire() as conn:
            counters_before = await pg_counters(conn)
        cpu_before = CpuSample.take(groups, postmaster)
        result = await run_demo(ends.kafka, pool, config, DemoOptions(orders=orders, seed=7))
        cpu = CpuSample.take(groups, postmaster).minus(cpu_before)
        async with pool.acquire() as conn:
            counters = {k: v - counters_before.get(k, 0) for k, v in (await pg_counters(conn)).items()}
    finally:
        await pool.close()
        platform.stop()
    done = max(orders - result.open_sagas, 1)
    per_process = {name: round(1000 * seconds / done, 2) for name, seconds in sorted(cpu.items())}
    cost: dict[str, Any] = {
        "cpu_ms_per_saga": per_process,
        "cpu_ms_per_saga_total": round(1000 * sum(cpu.values()) / done, 2),
        **{f"{name}_per_saga": round(value / done, 1) for name, value in counters.items()},
    }
    # One saga costs about a dozen Kafka records and a dozen transactions (handlers, outbox
    # marks, inbox, tracker) across the services: the ratios say how close we come.
    figures = {
        "orders": orders,
        "sagas_per_s": round(result.sagas_per_s, 1),
        "latency_ms": result.latency_ms,
        "invariants_ok": result.invariants.ok,
        **{k: round(v) for k, v in ceilings.items()},
        "sagas_per_s_per_1000_pg_commits_per_s": round(
            1000 * result.sagas_per_s / ceilings["postgres_commits_per_s"], 2
        ),
        **cost,
    }
    print(
        f"saga: {figures['sagas_per_s']} sagas/s, latency p50 {result.latency_ms.get('p50')} ms,"
        f" p95 {result.latency_ms.get('p95')} ms, p99 {result.latency_ms.get('p99')} ms"
        f" ({orders} orders, invariants {'ok' if result.invariants.ok else 'FAILED'});"
        " ceilings in the same run:"
        f" kafka producer-perf {figures['kafka_producer_perf_records_per_s']} rec/s,"
        f" consumer-perf {figures['kafka_consumer_perf_records_per_s']} rec/s,"
        f" PostgreSQL {figures['postgres_commits_per_s']} commits/s"
        f" -> {figures['sagas_per_s_per_1000_pg_commits_per_s']} sagas/s per 1,000 commits/s"
    )
    print(
        f"saga cost: {cost['cpu_ms_per_saga_total']} ms CPU per completed saga, all processes"
        f" ({', '.join(f'{k} {v}' for k, v in per_process.items())});"
        f" {cost.get('transactions_per_saga', '?')} transactions and"
        f" {cost.get('statements_per_saga', 'n/a (pg_stat_statements not loaded)')} statements per saga"
    )
    return figures


def run() -> dict[str, Any]:
    return asyncio.run(run_async(int(os.environ.get("SAGALINE_BENCH_ORDERS", "1000"))))
