"""`sagaline topics ensure` — the admin step that creates or checks every topic of the saga
(the topic map's, and each consumer group's retry lanes and dead-letter topic), as the
`admin` Kafka user under least privilege."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import typer
from rich.table import Table

from producers.admin import TopicReport, ensure_topics
from sagaline.bootstrap import endpoints, saga_config
from sagaline.console import emit_json, out
from sagaline.kafkaacls import ADMIN
from sagaline.settings import Settings
from schemas.topics import TopicMap

app = typer.Typer(help="The saga's Kafka topics.", no_args_is_help=True)


@app.command()
def ensure(
    prefix: str = typer.Option("", "--prefix", help="Prefix every topic name (isolated environments)."),
    partitions: int = typer.Option(6, "--partitions", min=1, max=1000, help="Partitions per topic."),
    replication: int = typer.Option(
        3, "--replication", min=1, max=5, help="Replicas (capped to the brokers)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create missing topics (the map's and every group's lanes), leave existing ones alone,
    report drift (exit 1 on drift)."""
    settings = Settings()
    config = replace(
        saga_config(settings), topics=TopicMap(prefix=prefix, partitions=partitions, replication=replication)
    )

    async def run() -> TopicReport:
        ends = await endpoints(settings, start_local=False)
        return await ensure_topics(ends.kafka_as(ADMIN), config.topic_specs())

    report = asyncio.run(run())
    if json_output:
        emit_json(
            {"ok": report.ok, "created": report.created, "unchanged": report.unchanged, "drift": report.drift}
        )
    else:
        table = Table("topic", "state")
        for name in report.created:
            table.add_row(name, "[green]created[/]")
        for name in report.unchanged:
            table.add_row(name, "ok")
        for name, problems in report.drift.items():
            table.add_row(name, "[red]drift:[/] " + "; ".join(problems))
        out.print(table)
    if not report.ok:
        raise typer.Exit(1)
