"""`sagaline publish TYPE` — validate and publish one message as an upstream service would."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import typer

from producers.errors import PublishValidationError
from producers.publisher import Ack, Publisher, parse_payload
from sagaline.bootstrap import endpoints
from sagaline.console import emit_json, err, out, read_input, safe
from sagaline.runtime import configure_tracing
from sagaline.settings import Settings
from schemas.topics import TopicMap


def publish(
    message_type: str = typer.Argument(
        ..., metavar="TYPE", help="Message type, e.g. PlaceOrder or CancelOrder."
    ),
    file: Path = typer.Option(Path("-"), "--file", "-f", help="JSON payload file; '-' reads stdin."),
    source: str = typer.Option("/upstream/cli", "--source", help="CloudEvents source of the publisher."),
    prefix: str = typer.Option("", "--topic-prefix", help="Topic prefix (isolated environments)."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate the payload against the contract, then publish it (exit 1 if invalid, nothing sent)."""
    text = read_input(file)
    try:
        payload = json.loads(text)
        message = parse_payload(message_type, payload)
    except json.JSONDecodeError as exc:
        _invalid(f"payload is not JSON: {exc}", [], json_output)
    except PublishValidationError as exc:
        _invalid(str(exc), exc.errors, json_output)

    settings = Settings()

    async def send() -> Ack:
        ends = await endpoints(settings, start_local=False)
        async with Publisher(
            ends.kafka_as("upstream"), source=source, topics=TopicMap(prefix=prefix)
        ) as publisher:
            return await publisher.publish(message)

    stop_tracing = configure_tracing(settings, "publish")
    try:
        ack = asyncio.run(send())
    finally:
        stop_tracing()
    if json_output:
        emit_json({"published": True, **asdict(ack)})
    else:
        out.print(f"published {message_type} {ack.event_id} to {ack.topic}[{ack.partition}]@{ack.offset}")


def _invalid(reason: str, errors: list[tuple[str, str]], json_output: bool) -> None:
    if json_output:
        emit_json(
            {"published": False, "reason": reason, "errors": [{"path": p, "problem": m} for p, m in errors]}
        )
    else:
        err.print(f"[bold red]invalid:[/] {safe(reason)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
