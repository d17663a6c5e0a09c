"""What a failure may say about itself in dead-letter headers and logs.

Exception text is untrusted and may be personal data: PostgreSQL's DETAIL line repeats the
offending row's values (`Key (customer_id)=(alice@example.com) already exists`), and a
handler's message may quote a payload field. `Redactor` drops DETAIL lines and masks the
values of the configured sensitive fields; `bounded` caps a text's length so one record
can never write a 10 MB log line or header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_DETAIL = re.compile(r"^[ \t]*DETAIL:.*(?:\n|$)", re.MULTILINE)


def bounded(text: str, limit: int) -> str:
    """`text`, cut to at most `limit` characters with a visible marker."""
    marker = "...[truncated]"
    return text if len(text) <= limit else text[: max(limit - len(marker), 0)] + marker


class Redactor:
    """Masks what must not leave the process in diagnostics."""

    def __init__(self, sensitive_fields: Iterable[str] = ()) -> None:
        names = [re.escape(name) for name in sensitive_fields if name]
        # name=value, name: value, "name": "value", (name)=(value)
        self._fields = (
            re.compile(
                r"(?i)(\(?[\"']?\b(?:" + "|".join(names) + r")\b[\"']?\)?\s*(?:=|:)\s*)"
                r"(\([^)]*\)|\"[^\"]*\"|'[^']*'|[^\s,;)}\]]+)"
            )
            if names
            else None
        )

    def __call__(self, text: str) -> str:
        text = _DETAIL.sub("", text)
        if self._fields is not None:
            text = self._fields.sub(lambda m: m.group(1) + MASK, text)
        return text

    def describe(self, exc: BaseException, limit: int) -> str:
        """`Type: message`, redacted and bounded: what a log line says of a failure."""
        return bounded(self(f"{type(exc).__name__}: {exc}"), limit)


def utf8(text: str) -> bytes:
    """UTF-8 bytes of any str, lone surrogates included (they become U+FFFD)."""
    return text.encode("utf-8", errors="replace")
