"""Untrusted text on its way to a terminal, a dead-letter header or a log line."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from consumers.diagnostics import Redactor, bounded
from producers import failpoints
from sagaline.console import safe
from sagaline.runtime import LOG_LINE_LIMIT, BoundedFormatter

DETAIL = (
    'duplicate key value violates unique constraint "x_pkey"\n'
    "DETAIL:  Key (customer_id)=(alice@example.com) already exists."
)


def _rendered(markup: str) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200)
    console.print(markup, highlight=False)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_markup_in_untrusted_text_prints_literally_and_links_nothing() -> None:
    text = "[link=https://evil.example]click[/link] [/x] [bold]"
    output = _rendered(f"header: {safe(text)}")
    assert "[link=https://evil.example]click[/link]" in output
    assert "\x1b]8;" not in output  # no OSC 8 hyperlink


def test_control_and_bidi_characters_are_shown_not_obeyed() -> None:
    shown = safe("a\x1b[2Jb\x07c\u202ed\nnext")
    assert "\x1b" not in shown
    assert "\u202e" not in shown
    assert "\\x1b[2J" in shown
    assert "\\n" in shown
    assert safe("one\ntwo", multiline=True) == "one\ntwo"


def test_long_untrusted_text_is_cut() -> None:
    assert len(safe("x" * 10_000, limit=100)) < 120


def test_database_detail_lines_and_sensitive_fields_are_redacted() -> None:
    redact = Redactor(["customer_id"])
    assert "alice" not in redact(DETAIL)
    assert redact(DETAIL).startswith("duplicate key value")
    assert redact("bad customer_id=alice@example.com here") == "bad customer_id=*** here"
    assert redact('{"customer_id": "alice", "sku": "s-1"}') == '{"customer_id": ***, "sku": "s-1"}'
    assert Redactor().describe(ValueError(DETAIL), 40) == bounded(
        'ValueError: duplicate key value violates unique constraint "x_pkey"\n', 40
    )


def test_failpoints_parse_and_refuse_nonsense() -> None:
    assert failpoints.parse("a=exit, b=raise@3, c=on, d=stall@2") == {
        "a": ("exit", None),
        "b": ("raise", 3),
        "c": ("on", None),
        "d": ("stall", 2),
    }
    for bad in ("a=explode", "a=exit@0", "a=exit@x", "=exit"):
        with pytest.raises(ValueError, match="not name=exit"):
            failpoints.parse(bad)
    failpoints.arm("unit.test=raise@2,unit.defect=on")
    try:
        failpoints.hit("unit.test")  # the first hit passes
        with pytest.raises(failpoints.FailpointError):
            failpoints.hit("unit.test")
        failpoints.hit("unit.test")  # only the second
        failpoints.hit("unit.other")  # unarmed: nothing happens
        assert failpoints.enabled("unit.defect")
        assert not failpoints.enabled("unit.other")
    finally:
        failpoints.arm("")


def test_a_log_line_is_bounded_whatever_its_arguments() -> None:
    record = logging.LogRecord(
        "w", logging.WARNING, __file__, 1, "dead-lettered: %s", ("x" * 10_000_000,), None
    )
    line = BoundedFormatter("%(levelname)s %(message)s").format(record)
    assert len(line) <= LOG_LINE_LIMIT
    assert line.startswith("WARNING dead-lettered: xxx")
