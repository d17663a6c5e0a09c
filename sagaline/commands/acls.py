"""`sagaline acls ensure` — least privilege in Kafka: the ACLs of every service's user, the
DLQ tooling's and upstream publishers' (sagaline.kafkaacls), applied as the `admin` user."""

from __future__ import annotations

import asyncio

import typer
from rich.table import Table

from producers.acls import AclReport, ensure_acls
from sagaline import kafkaacls
from sagaline.bootstrap import endpoints, saga_config
from sagaline.console import emit_json, out, safe
from sagaline.settings import Settings

app = typer.Typer(help="Kafka ACLs of the saga's users.", no_args_is_help=True)


@app.command("ensure")
def ensure(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report what is missing and what drifted."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Grant each user exactly what it needs (generated from the topic map, the services'
    subscriptions and lanes), leave granted ACLs alone, and report every other ACL those users
    hold as drift (exit 1). Idempotent: run it on every deployment, after `topics ensure`."""
    settings = Settings()
    config = saga_config(settings)

    async def run() -> AclReport:
        ends = await endpoints(settings, start_local=False)
        return await ensure_acls(
            ends.kafka_as(kafkaacls.ADMIN),
            kafkaacls.bindings(config),
            create=not dry_run,
            owned=kafkaacls.owned(config),
        )

    report = asyncio.run(run())
    if json_output:
        emit_json(
            {
                "ok": report.ok,
                "dry_run": dry_run,
                "created": [str(b) for b in report.created],
                "unchanged": len(report.unchanged),
                "unexpected": [str(b) for b in report.unexpected],
            }
        )
    else:
        table = Table("ACL", "state")
        verb = "[yellow]missing[/]" if dry_run else "[green]created[/]"
        for binding in report.created:
            table.add_row(safe(str(binding)), verb)
        for binding in report.unexpected:
            table.add_row(safe(str(binding)), "[red]unexpected (drift)[/]")
        out.print(table)
        out.print(f"{len(report.unchanged)} ACLs already in place")
    if not report.ok:
        raise typer.Exit(1)
