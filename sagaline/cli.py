"""`sagaline` — the command line. Each command group lives in sagaline/commands/."""

from __future__ import annotations

import logging
import os
import sys

import typer
from pydantic import ValidationError

from producers import failpoints
from producers.errors import Unreachable
from sagaline.commands import (
    acls,
    bench,
    db,
    demo,
    dev,
    dlq,
    outbox,
    publish,
    relay,
    saga,
    schemas,
    secrets,
    smoke,
    topics,
    worker,
)
from sagaline.console import err, safe
from sagaline.settings import Settings, describe_invalid

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
app.add_typer(acls.app, name="acls")
app.command("smoke")(smoke.smoke)
app.command("publish")(publish.publish)
app.command("relay")(relay.relay)
app.command("worker")(worker.worker)
app.command("up")(worker.up)
app.command("demo")(demo.demo)
app.command("bench")(bench.bench)
app.add_typer(saga.app, name="saga")
app.add_typer(dlq.app, name="dlq")
app.add_typer(outbox.app, name="outbox")
app.add_typer(db.app, name="db")
app.add_typer(secrets.app, name="secrets")


def _click_error(name: str) -> type[Exception]:
    """Click's exception class `name`, from the click Typer runs on (Typer >= 0.22 vendors
    its own copy, so `import click` would name a different class or none)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_USAGE_ERROR = _click_error("UsageError")
_CLICK_ERROR = _click_error("ClickException")


def main() -> None:
    """Console-script entry point. A bad argument is one line and exit code 2; an
    unreachable Kafka or PostgreSQL, or any unexpected failure, one line and exit code 1
    (`SAGALINE_DEBUG=1` shows the traceback)."""
    # aiokafka logs each failed connection attempt; a short command says it once, itself
    # (long-running commands configure logging, and their records still reach it).
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    try:
        if os.environ.get("SAGALINE_FAILPOINTS"):
            failpoints.arm(Settings().failpoints)
        result = app(standalone_mode=False)
        sys.exit(result if isinstance(result, int) else 0)
    except _USAGE_ERROR as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx else ""
        _error(exc.format_message() + hint)  # type: ignore[attr-defined]
        sys.exit(2)
    except _CLICK_ERROR as exc:
        _error(exc.format_message())  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        sys.exit(130)
    except Unreachable as exc:
        _error(str(exc))
        sys.exit(1)
    except ValidationError as exc:  # a setting from the environment: named, its value never shown
        _error(describe_invalid(exc))
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("SAGALINE_DEBUG"):
            raise
        _error(f"{type(exc).__name__}: {exc}")
        sys.exit(1)


def _error(message: str) -> None:
    text = " ".join(message.split())  # one line, whatever the message holds
    err.print(f"[bold red]error:[/] {safe(text)}", highlight=False, soft_wrap=True)
