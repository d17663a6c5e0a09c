"""`sagaline bench` — the platform under load, next to ceilings measured in the same run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from sagaline.bench import BenchOptions, run_bench
from sagaline.console import emit_json, err, out, safe
from sagaline.demo import hops_line
from sagaline.runtime import configure_logging
from sagaline.settings import Settings


def bench(
    seconds: float = typer.Option(
        60.0, "--seconds", min=5, max=3600, help="Target length of each sustained-throughput run."
    ),
    latency_seconds: float = typer.Option(
        20.0, "--latency-seconds", min=2, max=3600, help="Length of each open-loop latency run."
    ),
    scaling: bool = typer.Option(
        True, "--scaling/--no-scaling", help="Also run 2 processes per service, and twice the partitions."
    ),
    ceilings: bool = typer.Option(
        True,
        "--ceilings/--no-ceilings",
        help="Measure Kafka's and PostgreSQL's ceilings first, and the saga path's latency ceiling last.",
    ),
    tracing: bool = typer.Option(
        True,
        "--tracing/--no-tracing",
        help="Also run the sustained phase with every span exported (100%) to a local OTLP receiver.",
    ),
    keep: bool = typer.Option(
        False,
        "--keep",
        help="Leave each run's schemas and topics on the stack (they are dropped by default).",
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Also append the tables (Markdown) to this file, e.g. docs/benchmarks.md."
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Measure the whole platform on this machine: sustained sagas/s and where its CPU goes
    (per process), SQL statements, transactions and Kafka records per saga, open-loop latency
    at 25/50/75% of the sustained rate and at 10 orders/s, with tracing on (every span
    exported) against off, scaling to 2 processes and to twice the partitions; the latency
    ceiling: the saga's four hops as bare relays at the half-load rate. Starts the
    local stack when nothing is configured; each run works on fresh topics and schemas and
    drops them when it ends (`--keep` leaves them). Exit 1 if any run breaks an invariant.
    Takes about 10 minutes."""
    settings = Settings()
    configure_logging("WARNING")
    options = BenchOptions(
        seconds=seconds,
        latency_seconds=latency_seconds,
        scaling=scaling,
        ceilings=ceilings,
        tracing=tracing,
        keep=keep,
    )

    def say(line: str) -> None:
        if not json_output:
            err.print(f"[dim]{safe(line)}[/]", highlight=False)

    result = asyncio.run(run_bench(settings, options, say))
    if json_output:
        emit_json(result)
    else:
        for table in _tables(result):
            out.print(table)
    if report is not None:
        with report.open("a") as handle:
            handle.write(markdown(result))
    if not result["ok"]:
        raise typer.Exit(1)


def _tables(result: dict[str, Any]) -> list[Table]:
    env = result["environment"]
    head = _table("environment and ceilings", ("", ""))
    for key, value in [*env.items(), *result.get("ceilings", {}).items()]:
        head.add_row(key, str(value))
    sustained = _table(
        "sustained (orders published at once, drained)",
        (
            "layout",
            "sagas/s",
            "ratio",
            "CPU ms/saga",
            "load generator CPU ms/saga",
            "statements",
            "transactions",
            "WAL kB (full pages)",
            "records",
            "tracker trails s (sagas/s with it)",
            "ok",
        ),
    )
    for row in result["sustained"]:
        sustained.add_row(*_sustained_cells(row))
    latency = _table(
        "latency, open loop (last request published -> saga terminal)",
        (
            "offered",
            "orders/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "p99 of a second: median / worst (at s)",
            "CPU ms/saga",
            "statements",
            "ok",
        ),
    )
    for row in result.get("latency", []):
        latency.add_row(*_latency_cells(row))
    tables = [head, sustained, latency]
    if any(row.get("hops_ms") for row in result.get("latency", [])):
        hops = _table("where the latency goes: per hop, p50 / p99 ms", ("offered", "hops"))
        for row in result["latency"]:
            hops.add_row(row["offered"], hops_line(row.get("hops_ms", {})))
        tables.append(hops)
    if result.get("latency_ceilings"):
        ceilings = _table(
            "latency ceiling: the saga's four hops as bare relays, same rate, same run",
            ("at", "records/s", "a hop", "p50 ms", "p95 ms", "p99 ms", "CPU ms/record", "saga p99 / this"),
        )
        for row in result["latency_ceilings"]:
            ceilings.add_row(*_ceiling_cells(row))
        tables.append(ceilings)
    return tables


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def _ceiling_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["offered"],
        str(row["offered_per_s"]),
        "Kafka and one transaction" if row["transactional"] else "Kafka only",
        str(row.get("p50", "n/a")),
        str(row.get("p95", "n/a")),
        str(row.get("p99", "n/a")),
        f"{sum(row['cpu_ms_per_record'].values()):.2f} ({_by_process(row['cpu_ms_per_record'])})",
        f"{row['saga_p99_ratio']}x" if row.get("saga_p99_ratio") is not None else "n/a",
    ]


def _sustained_cells(row: dict[str, Any]) -> list[str]:
    return [
        f"{row['replicas']} x {row['partitions']} partitions{', tracing on' if row.get('tracing') else ''}",
        str(row["sagas_per_s"]),
        str(row.get("ratio_to_first")),
        f"{row['cpu_ms_per_saga_total']} ({_by_process(row['cpu_ms_per_saga'])})",
        str(row.get("load_generator_cpu_ms_per_saga", "n/a")),
        str(row.get("statements_per_saga", "n/a")),
        str(row.get("transactions_per_saga", "n/a")),
        _wal(row),
        str(row["kafka_records_per_saga"]),
        _trail(row),
        "ok" if row["invariants_ok"] else "FAILED",
    ]


def _trail(row: dict[str, Any]) -> str:
    """`0.37 (763.4/s)`: how long after the last saga the tracker showed every saga ended,
    and the sagas/s of the whole platform, counted until then."""
    if row.get("tracker_trail_s") is None:
        return "n/a"
    return f"{row['tracker_trail_s']} ({row.get('sagas_per_s_with_tracker', 'n/a')}/s)"


def _wal(row: dict[str, Any]) -> str:
    """WAL per saga in kB, with the full-page images among it (they grow after checkpoints)."""
    if "wal_bytes_per_saga" not in row:
        return "n/a"
    return f"{row['wal_bytes_per_saga'] / 1000:.1f} ({row.get('wal_full_pages_per_saga', 'n/a')})"


def _by_process(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms}" for name, ms in cpu.items())


def _latency_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["offered"],
        str(row["orders_per_s"]),
        str(row["p50"]),
        str(row["p95"]),
        str(row["p99"]),
        _by_second(row.get("by_second_ms") or {}),
        str(row.get("cpu_ms_per_saga_total", "n/a")),
        str(row.get("statements_per_saga", "n/a")),
        "ok" if row["invariants_ok"] else "FAILED",
    ]


def _by_second(seconds: dict[str, float]) -> str:
    """`180.2 / 516.0 (16 s)`: the median and the worst of each second's p99, and when the
    worst second began; a stall stands out from the median, an overload raises the median."""
    if not seconds:
        return "n/a"
    return f"{seconds['p99_median']} / {seconds['p99_worst']} ({seconds['worst_at_s']:.0f} s)"


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables, for docs/benchmarks.md."""
    env = result["environment"]
    lines = [
        "",
        f"### `sagaline bench` — {env['date']}",
        "",
        f"{env['cores']} cores, {env['memory_gib']} GiB, Python {env['python']}, Kafka {env['kafka']},"
        f" aiokafka {env['aiokafka']}, asyncpg {env['asyncpg']}; {env['settings']}.",
    ]
    if "ceilings" in result:
        lines += ["", "Ceilings: " + ", ".join(f"{k} {v:,.0f}" for k, v in result["ceilings"].items()) + "."]
    lines += [
        "",
        "| layout | sagas/s | ratio | CPU ms/saga (by process) | load generator CPU ms/saga"
        " | statements/saga | transactions/saga | WAL kB/saga (full-page images) | Kafka records/saga"
        " | tracker trails s (sagas/s with it) | invariants |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(_sustained_cells(row)) + " |" for row in result["sustained"]]
    if result.get("latency"):
        lines += [
            "",
            "| offered load | orders/s | p50 ms | p95 ms | p99 ms | p99 of a second: median / worst (at s)"
            " | CPU ms/saga | statements/saga | invariants |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(_latency_cells(row)) + " |" for row in result["latency"]]
        lines += ["", "Per hop, p50 / p99 ms:", ""]
        lines += [f"- {row['offered']}: {hops_line(row.get('hops_ms', {}))}" for row in result["latency"]]
    if result.get("latency_ceilings"):
        lines += [
            "",
            "Latency ceiling (`sagaline.chain`): the saga's four hops as bare relay processes, at the"
            " same offered rate in the same run.",
            "",
            "| at | records/s | a hop | p50 ms | p95 ms | p99 ms | CPU ms/record (by process)"
            " | saga p99 / this |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(_ceiling_cells(row)) + " |" for row in result["latency_ceilings"]]
    return "\n".join(lines) + "\n"
