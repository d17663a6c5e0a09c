"""Output helpers shared by every CLI command: human (Rich) by default, `--json` for scripts.

Text that came from outside (records, headers, exception messages, ids, file names) goes
through `safe` before it reaches Rich: markup is escaped, so `[link=...]` prints as text,
and control and format characters (ANSI escapes, bidi overrides) are shown as `\\x1b`, so
nothing a producer sent can drive the operator's terminal.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)

LINE_LIMIT = 2000


def safe(value: object, *, limit: int = LINE_LIMIT, multiline: bool = False) -> str:
    """`value` as literal text for Rich: markup escaped, control characters made visible
    (newlines kept when `multiline`), cut at `limit` characters."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "...[truncated]"
    shown = "".join(
        ch
        if (multiline and ch == "\n") or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
        else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        for ch in text
    )
    return escape(shown)


def read_input(file: Path, param_hint: str = "--file") -> str:
    """A UTF-8 text file's content (`-`: standard input); a bad path or encoding is a bad
    parameter (one line, exit 2)."""
    try:
        if str(file) == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot read {file}: {exc.strerror or exc}", param_hint=param_hint
        ) from None
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(
            f"{file} is not UTF-8 text (byte {exc.start})", param_hint=param_hint
        ) from None


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr saying why, then a non-zero exit."""
    err.print(f"[bold red]error:[/] {safe(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
