"""Named failpoints for fault-injection tests: a process armed with `dlq.after-send=exit`
dies at that point exactly as a SIGKILL would leave it. Unarmed (the default) a failpoint
costs one set lookup.

Armed once per process by the bootstrap from `SAGALINE_FAILPOINTS`, a comma-separated list
of `name=action` with action `exit` (the process ends at once, no cleanup, exit code 137)
or `raise` (`FailpointError`, as a bug there would).
"""

from __future__ import annotations

import os

ACTIONS = ("exit", "raise")
_armed: dict[str, str] = {}


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with `raise`."""


def parse(spec: str) -> dict[str, str]:
    """`a=exit,b=raise` -> {a: exit, b: raise}; ValueError names what is wrong."""
    armed: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if not name or action not in ACTIONS:
            raise ValueError(f"failpoint {item!r} is not name=exit or name=raise")
        armed[name] = action
    return armed


def arm(spec: str) -> None:
    _armed.clear()
    _armed.update(parse(spec))


def hit(name: str) -> None:
    """Act if `name` is armed."""
    action = _armed.get(name)
    if action == "exit":
        os._exit(137)
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
