"""`sagaline dev up|down|status|logs` — the local Kafka + PostgreSQL stack, no Docker."""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from sagaline.bootstrap import local_stack, without_password
from sagaline.console import emit_json, fail, out
from sagaline.kafkaacls import PRINCIPALS
from sagaline.localstack.process import MissingToolError
from sagaline.settings import Settings

app = typer.Typer(
    help="Run a real Kafka (KRaft) and PostgreSQL locally, without Docker.", no_args_is_help=True
)


class Component(StrEnum):
    kafka = "kafka"
    postgres = "postgres"


@app.command()
def up(
    brokers: int = typer.Option(
        1, "--brokers", help="Kafka nodes: 1, or 3 for RF=3 / min.insync.replicas=2."
    ),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="Kafka with SASL_SSL (SCRAM-SHA-512, a CA and certificate made for 127.0.0.1) and ACLs "
        "(the authorizer denies what no ACL allows); a SCRAM user per service, dlq, upstream and admin.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Start Kafka and PostgreSQL (idempotent: an already running stack is reused)."""
    if brokers not in (1, 3):
        fail(f"--brokers must be 1 or 3, not {brokers}", code=2)
    stack = local_stack(Settings())
    started_at = time.monotonic()
    start = stack.up(brokers=brokers, secure=secure, users=PRINCIPALS)
    try:
        if json_output:
            result = asyncio.run(start)
        else:
            with out.status("starting Kafka and PostgreSQL (first start resolves Kafka's jars)..."):
                result = asyncio.run(start)
    except MissingToolError as exc:
        fail(str(exc), code=3)
    payload = {
        "kafka_bootstrap": result.kafka_bootstrap,
        "postgres_dsn": without_password(result.postgres_dsn),
        "started": result.started,
        "downloaded_jars": result.downloaded_jars,
        "seconds": round(time.monotonic() - started_at, 1),
        "secure": secure,
    }
    if secure:
        payload |= {
            "ca_file": str(stack.tls_dir / "ca.pem"),
            "kafka_passwords_dir": str(stack.kafka_passwords_dir),
        }
    if json_output:
        emit_json(payload)
        return
    what = ", ".join(result.started) if result.started else "nothing new (already running)"
    out.print(f"[green]ready[/] in {payload['seconds']}s — started: {what}")
    out.print(f"  Kafka       {result.kafka_bootstrap}")
    out.print(f"  PostgreSQL  {payload['postgres_dsn']}")
    if secure:
        out.print(f"  CA          {payload['ca_file']}")
        out.print(f"  passwords   {payload['kafka_passwords_dir']} (one file per Kafka user)")


@app.command()
def down(
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Stop what `dev up` started (tracked by pid files); data stays for the next `up`."""
    stopped = local_stack(Settings()).down()
    if json_output:
        emit_json({"stopped": stopped})
    else:
        out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Versions and readiness of the local stack (exit 1 unless everything is ready)."""
    result = asyncio.run(local_stack(Settings()).status())
    if json_output:
        emit_json(result.as_dict())
    else:
        table = Table("component", "version", "address", "ready", "detail")
        for c in result.components:
            table.add_row(
                c.name, c.version, c.address, "[green]yes[/]" if c.ready else "[red]no[/]", c.detail
            )
        out.print(table)
    if not result.ready:
        raise typer.Exit(1)


@app.command()
def logs(
    component: Component = typer.Argument(Component.kafka, help="Whose log to print."),
    lines: int = typer.Option(50, "-n", "--lines", min=1, help="How many trailing lines."),
    node: int = typer.Option(1, "--node", min=1, help="Kafka node number (with --brokers 3)."),
) -> None:
    """Print the tail of a component's log file."""
    stack = local_stack(Settings())
    path: Path
    if component is Component.kafka:
        nodes = stack.kafka_nodes()
        if node > len(nodes):
            fail(f"--node {node}: the stack has {len(nodes)} Kafka node(s)", code=2)
        path = nodes[node - 1].log_file
    else:
        path = stack.postgres.log_file
    if not path.exists():
        fail(f"no log yet at {path}: run `sagaline dev up` first")
    out.print(
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]),
        highlight=False,
        markup=False,
    )
