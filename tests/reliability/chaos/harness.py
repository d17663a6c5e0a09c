"""The chaos harness: the saga's services as real OS processes on real Kafka and
PostgreSQL, a workload published under load, faults injected, quiescence awaited, and the
checker's verdict — with a JSONL history and every service log kept for a failed run.

Faults act on processes the way the world does: SIGKILL (power loss), SIGSTOP/SIGCONT (a
stalled VM or a long GC pause), SIGTERM (a deploy), and named failpoints armed through
`SAGALINE_FAILPOINTS` (a crash at an exact point). `Nemesis` heals in a `finally`: every
stopped process is continued, every killed one restarted, whatever the scenario did.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers.publisher import Publisher
from sagas.config import SERVICES
from tests.processes import CliProcess
from tests.reliability.chaos.checker import Verdict, check
from tests.reliability.chaos.workload import PlannedOrder, Workload
from tests.saga_support import SagaPlatform
from tests.support import wait_until

RESULTS = Path(__file__).resolve().parents[3] / ".sagaline" / "chaos" / "results.jsonl"


@dataclass
class Run:
    scenario: str
    faults: int = 0
    quiescence_s: float = 0.0
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)


class Chaos:
    """One scenario's deployment: its own topics, schemas and groups (a unique prefix)."""

    def __init__(self, saga: SagaPlatform, workdir: Path, scenario: str) -> None:
        self.saga = saga
        self.workdir = workdir
        self.run = Run(scenario)
        self.processes: dict[str, CliProcess] = {}
        self.failpoints: dict[str, str] = {}
        self._history = (workdir / "history.jsonl").open("a")
        self._starts: dict[str, int] = {}

    def record(self, event: str, **details: Any) -> None:
        self._history.write(
            json.dumps({"t": round(time.time(), 3), "event": event, **details}, default=str) + "\n"
        )
        self._history.flush()

    def env(self, name: str) -> dict[str, str]:
        saga = self.saga
        return {
            "SAGALINE_KAFKA_BOOTSTRAP": saga.kafka.bootstrap_servers,
            "SAGALINE_POSTGRES_DSN": saga.postgres_dsn,
            "SAGALINE_SAGA_PREFIX": saga.config.prefix,
            "SAGALINE_TOPIC_PREFIX": saga.config.topics.prefix,
            "SAGALINE_TOPIC_PARTITIONS": str(saga.config.topics.partitions),
            "SAGALINE_TOPIC_REPLICATION": str(saga.config.topics.replication),
            "SAGALINE_RETRY_DELAYS_S": ",".join(str(d) for d in saga.config.retry_delays_s),
            "SAGALINE_PAYMENT_TIMEOUT_S": str(saga.config.payment_timeout_s),
            "SAGALINE_STOCK_TIMEOUT_S": str(saga.config.stock_timeout_s),
            "SAGALINE_SHUTDOWN_DEADLINE_S": "20",
            "SAGALINE_FAILPOINTS": self.failpoints.get(name, ""),
        }

    def start(self, name: str, *, instance: str | None = None) -> CliProcess:
        """Start a service (`dlq` is the DLQ indexer); `instance` names a second process of it."""
        key = instance or name
        self._starts[key] = self._starts.get(key, 0) + 1
        args = ["dlq", "index"] if name == "dlq" else ["worker", name]
        log = self.workdir / f"{key}-{self._starts[key]}.log"
        process = CliProcess([*args, "--metrics-port", "0"], self.env(name), log)
        self.processes[key] = process
        self.record("start", process=key, pid=process.proc.pid, failpoints=self.failpoints.get(name, ""))
        return process

    async def serving(self, key: str, timeout_s: float = 60.0) -> None:
        """Until the process `key` serves (it logs its ops address once its signal handlers,
        pool and lanes are in place): a SIGTERM before that finds no handler yet."""

        async def logged() -> bool:
            return " ops on " in self.processes[key].output()

        await wait_until(logged, timeout_s=timeout_s)

    async def start_all(self, *, dlq: bool = False) -> None:
        """Every service (and the DLQ indexer), once each has installed its tables."""
        for name in (*SERVICES, *(("dlq",) if dlq else ())):
            self.start(name)

        async def installed() -> bool:  # the outbox only a running service creates
            for name in SERVICES:
                if not await self.saga.scalar(
                    f"SELECT to_regclass('{self.saga.config.schema(name)}.outbox') IS NOT NULL"
                ):
                    return False
            return all(self.alive(key) for key in self.processes)

        await wait_until(installed, timeout_s=60)

    def signal(self, key: str, sig: signal.Signals) -> None:
        self.run.faults += 1
        self.record("signal", process=key, signal=sig.name)
        if sig == signal.SIGKILL:
            self.processes[key].kill()
        else:
            self.processes[key].proc.send_signal(sig)

    def alive(self, key: str) -> bool:
        return self.processes[key].proc.poll() is None

    async def publish(self, workload: Workload | list[PlannedOrder], rate: float | None = None) -> None:
        """Every order (and the planned cancellations), open loop at `rate` per second."""
        orders = workload.orders if isinstance(workload, Workload) else workload
        config = self.saga.config
        started = time.monotonic()
        async with Publisher(self.saga.kafka, source="/chaos/storefront", topics=config.topics) as publisher:

            async def place(number: int) -> None:
                planned = orders[number]
                if rate:
                    await asyncio.sleep(max(0.0, started + number / rate - time.monotonic()))
                await publisher.publish(planned.command)
                if planned.cancel_after_s is not None:
                    await asyncio.sleep(planned.cancel_after_s)
                    await publisher.publish(planned.cancel())

            await asyncio.gather(*(place(n) for n in range(len(orders))))
        self.record("published", orders=len(orders), seconds=round(time.monotonic() - started, 2))

    async def quiesce(self, workload: Workload | list[PlannedOrder], timeout_s: float = 240.0) -> None:
        """Until every order is terminal and every outbox row published (or the timeout: the
        checker then says what is missing)."""
        started = time.monotonic()
        ids = [o.order_id for o in (workload.orders if isinstance(workload, Workload) else workload)]
        while time.monotonic() - started < timeout_s:
            open_orders = await self.saga.scalar(
                "SELECT $1::int - count(*) FROM {order}.orders"
                " WHERE order_id = ANY($2::text[]) AND status IN ('CONFIRMED', 'CANCELLED')",
                len(ids),
                ids,
            )
            pending = 0
            for service in ("order", "payment", "inventory"):
                pending += await self.saga.scalar(
                    f"SELECT count(*) FROM {{{service}}}.outbox WHERE published_at IS NULL"
                )
            if open_orders == 0 and pending == 0:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # the last events reach every group (the checker verifies lag is zero)
        self.run.quiescence_s = round(time.monotonic() - started, 1)
        self.record("quiescent", seconds=self.run.quiescence_s)

    async def verdict(
        self, workload: Workload, poison: set[tuple[str, bytes | None]] | None = None
    ) -> Verdict:
        assert self.saga.pool is not None
        verdict = await check(self.saga.pool, self.saga.kafka, self.saga.config, workload, poison)
        self.run.verdict = verdict
        self.record("verdict", counts=verdict.counts, figures=verdict.figures, sample=verdict.summary())
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as results:
            row = {
                "scenario": self.run.scenario,
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": f"{os.cpu_count()} cores",
                "sagas": len(workload.orders),
                "faults": self.run.faults,
                "violations": verdict.counts,
                "quiescence_s": self.run.quiescence_s,
            }
            results.write(json.dumps(row) + "\n")
        return verdict

    def explain(self) -> str:
        """What failed, and where to look: the history, the services' logs (broker and
        database logs are under .sagaline/test-stack*/)."""
        verdict = self.run.verdict.summary() if self.run.verdict else "no verdict"
        return f"{verdict} (history and service logs: {self.workdir})"

    def stop_all(self) -> None:
        for key, process in self.processes.items():
            if process.proc.poll() is not None:
                process.reap()
            else:
                try:
                    process.proc.send_signal(signal.SIGCONT)
                    process.terminate(timeout_s=40)
                except Exception:
                    process.kill()
                self.record("stopped", process=key)
        self._history.close()


@asynccontextmanager
async def nemesis(chaos: Chaos) -> AsyncIterator[Chaos]:
    """Faults happen inside; on the way out, whatever happened: stopped processes are
    continued and dead ones restarted without failpoints, so the run can reach quiescence."""
    try:
        yield chaos
    finally:
        for key, process in list(chaos.processes.items()):
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGCONT)
            else:
                name = "dlq" if key == "dlq" else key.split("#")[0]
                chaos.failpoints.pop(name, None)
                chaos.record("heal", process=key, exit_code=process.reap())
                chaos.start(name, instance=key)
