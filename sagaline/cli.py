"""`sagaline` — the command line. Each command group lives in sagaline/commands/."""

from __future__ import annotations

import os
import sys

import typer

from sagaline.commands import demo, dev, dlq, publish, relay, saga, schemas, smoke, topics, worker
from sagaline.console import err

app = typer.Typer(
    name="sagaline",
    help="Choreographed sagas on Apache Kafka: local stack, workers, contracts and DLQ tools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(schemas.app, name="schemas")
app.add_typer(topics.app, name="topics")
app.command("smoke")(smoke.smoke)
app.command("publish")(publish.publish)
app.command("relay")(relay.relay)
app.command("worker")(worker.worker)
app.command("up")(worker.up)
app.command("demo")(demo.demo)
app.add_typer(saga.app, name="saga")
app.add_typer(dlq.app, name="dlq")


def main() -> None:
    """Console-script entry point: unexpected failures become one line and exit code 1."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("SAGALINE_DEBUG"):
            raise
        err.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
