"""`sagaline secrets init DIR` — the CA, certificates and passwords of a secure deployment
in one folder (sagaline.deploysecrets), each secret handed to the one uid that needs it."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from sagaline import deploysecrets
from sagaline.bootstrap import saga_config
from sagaline.console import emit_json, out, safe
from sagaline.settings import Settings

app = typer.Typer(
    help="Secrets of a secure deployment (TLS, Kafka and PostgreSQL passwords).", no_args_is_help=True
)


def _owner(value: str) -> tuple[str, tuple[int, int]]:
    """`NAME=UID` or `NAME=UID:GID` (the gid defaults to the uid)."""
    name, sep, ids = value.partition("=")
    if not sep or name not in deploysecrets.OWNERS:
        raise typer.BadParameter(
            f"{value!r}: expected NAME=UID[:GID], NAME one of {', '.join(deploysecrets.OWNERS)}",
            param_hint="--owner",
        )
    uid, _, gid = ids.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise typer.BadParameter(f"{value!r}: UID and GID must be numbers", param_hint="--owner")
    return name, (int(uid), int(gid or uid))


@app.command("init")
def init(
    directory: Path = typer.Argument(..., help="Folder to make them in (created if missing)."),
    hosts: list[str] = typer.Option(
        ["127.0.0.1", "localhost"],
        "--host",
        help="A name or IP address the servers' certificates are for (repeat: kafka, postgres, ...).",
    ),
    owners: list[str] = typer.Option(
        [],
        "--owner",
        help="NAME=UID[:GID]: hand NAME's secrets to that user (NAME: a Kafka user such as order "
        "or upstream, reader, kafka or postgres). Needs root.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Make what is missing: a CA and certificates for the Kafka broker and PostgreSQL naming
    every --host, a password file per Kafka user and per PostgreSQL role, the broker's SCRAM
    bootstrap file. Existing files are kept, so it is safe on every start; owners and modes
    are set again each time. Prints paths, owners and modes, never a secret."""
    parsed = dict(_owner(value) for value in owners)
    if parsed and os.geteuid() != 0:
        raise typer.BadParameter("handing files to other users (--owner) needs root", param_hint="--owner")
    report = deploysecrets.init(directory, saga_config(Settings()), tuple(hosts), parsed)
    if json_output:
        emit_json(
            [
                {
                    "path": str(f.path),
                    "for": f.owner,
                    "created": f.created,
                    "uid": f.uid,
                    "mode": f"{f.mode:04o}",
                }
                for f in report
            ]
        )
        return
    table = Table("file", "for", "uid", "mode", "state")
    for f in report:
        table.add_row(
            safe(str(f.path)), f.owner, str(f.uid), f"{f.mode:04o}", "created" if f.created else "kept"
        )
    out.print(table)
