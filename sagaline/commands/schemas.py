"""`sagaline schemas export|check` — the published contract."""

from __future__ import annotations

from pathlib import Path

import typer

from sagaline.console import emit_json, fail, out
from schemas.compat import check as compat_check
from schemas.contract import COMMITTED_CONTRACT, current_schemas, export, load_schemas

app = typer.Typer(help="Export the event contract (JSON Schema, AsyncAPI) and check compatibility.")


@app.command("export")
def export_command(
    directory: Path = typer.Argument(..., help="Where to write asyncapi.json and json-schema/*.json."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Write a JSON Schema per message and one AsyncAPI 3.0 document."""
    written = export(directory)
    if json_output:
        emit_json({"written": [str(p) for p in written]})
    else:
        out.print(f"wrote {len(written)} files under {directory}")


@app.command("check")
def check_command(
    against: Path = typer.Option(
        COMMITTED_CONTRACT,
        "--against",
        help="Contract directory to compare with (default: the committed one).",
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Fail (exit 1) if the code breaks backward compatibility with a committed contract."""
    if not (against / "json-schema").is_dir():
        fail(f"{against} has no json-schema/ directory: not a contract", code=2)
    problems = compat_check(load_schemas(against), current_schemas())
    if json_output:
        emit_json({"compatible": not problems, "problems": [str(p) for p in problems]})
    elif problems:
        for problem in problems:
            out.print(f"[red]breaking[/] {problem}", highlight=False)
    else:
        out.print(f"[green]compatible[/] with {against}")
    if problems:
        raise typer.Exit(1)
