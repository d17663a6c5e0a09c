"""Where a run's cost goes, measured from outside the processes: CPU-seconds from /proc for
each process (services, Kafka brokers, PostgreSQL backends), and PostgreSQL's own counters
(transactions from pg_stat_database; statements from pg_stat_statements when loaded; WAL
volume from pg_stat_wal).

CPU-seconds and round trips are the figures a noisy shared machine moves least; rates are
reported next to them, never instead of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from producers.db import DbConnection

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    return sum(int(x) for x in fields[11:15]) / _TICKS


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return found


@dataclass
class CpuSample:
    """CPU-seconds per named group of processes at one moment. PostgreSQL backends come and
    go: the postmaster's `cutime` holds the ones that ended, the live ones are read."""

    seconds: dict[str, float]

    @staticmethod
    def take(groups: dict[str, list[int]], postmaster: int | None) -> CpuSample:
        seconds = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}
        if postmaster is not None:
            seconds["postgresql"] = cpu_seconds(postmaster) + sum(
                cpu_seconds(p) for p in children_of(postmaster)
            )
        return CpuSample(seconds)

    def minus(self, before: CpuSample) -> dict[str, float]:
        return {name: value - before.seconds.get(name, 0.0) for name, value in self.seconds.items()}


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


async def pg_counters(conn: DbConnection) -> dict[str, int]:
    """Transactions committed and rolled back in this database; statements executed, when
    pg_stat_statements is loaded (the local stack preloads it); WAL bytes and full-page
    images written (pg_stat_wal: the whole cluster's, so only meaningful on a stack the
    measured run has to itself, like the bench stack)."""
    row = await conn.fetchrow(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    )
    counters = {"transactions": int(row["xact_commit"]) + int(row["xact_rollback"])} if row else {}
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        calls = await conn.fetchval(
            "SELECT sum(calls) FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        counters["statements"] = int(calls or 0)
    except asyncpg.PostgresError:
        pass  # not preloaded: statements are not counted
    try:
        wal = await conn.fetchrow("SELECT wal_bytes, wal_fpi FROM pg_stat_wal")
    except asyncpg.PostgresError:
        wal = None  # before PostgreSQL 14, or not allowed to read it
    if wal is not None:
        counters["wal_bytes"] = int(wal["wal_bytes"])
        counters["wal_full_pages"] = int(wal["wal_fpi"])
    return counters
