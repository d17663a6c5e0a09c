"""Named failpoints for fault-injection tests: a process armed with `dlq.after-send=exit`
dies at that point exactly as a SIGKILL would leave it. Unarmed (the default) a failpoint
costs one dictionary lookup.

Armed once per process by the bootstrap from `SAGALINE_FAILPOINTS`, a comma-separated list
of `name=action[@n]`:

- `exit`: the process ends at once, no clean-up, exit code 137;
- `raise`: `FailpointError`, as a bug at that point would (a permanent failure);
- `fail`: `FailpointOutage`, a ConnectionError, as a dependency down would (transient);
- `on`: `enabled(name)` is true — switches a deliberate defect on, for the negative
  controls that prove the reliability checker can fail (never for anything else);
- `stall`: the process stops at that point for good, as a frozen one would: its event
  loop is blocked (no heartbeats, no statements) and its sessions keep whatever they hold,
  an open transaction included; only SIGKILL ends it;
- `@n`: act on the n-th hit only (1-based), pass the others.

The points: `handler.<MessageType>` (before the handler of that type runs),
`worker.after-commit` (the database transaction committed, the Kafka offsets
not yet), `relay.before-send`, `relay.after-send` (acknowledged, not yet marked published),
`dlq.after-send` (a DLQ action's record acknowledged, its entry not yet marked), and the
defects `relay.drop` (one row in ten marked published without being sent),
`payment.debit-twice` (a charge debits the account twice) and `emit.twice` (every event a
handler emits is staged twice, under two event ids).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

ACTIONS = ("exit", "raise", "fail", "on", "stall")


@dataclass
class _Armed:
    action: str
    nth: int | None
    hits: int = 0


_armed: dict[str, _Armed] = {}


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with `raise`."""


class FailpointOutage(ConnectionError):
    """Raised by a failpoint armed with `fail`: transient wherever failures are classified."""


def parse(spec: str) -> dict[str, tuple[str, int | None]]:
    """`a=exit,b=raise@3` -> {a: (exit, None), b: (raise, 3)}; ValueError names what is wrong."""
    armed: dict[str, tuple[str, int | None]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition("=")
        action, _, nth = rest.partition("@")
        if not name or action not in ACTIONS or (nth and not (nth.isdigit() and int(nth) > 0)):
            raise ValueError(f"failpoint {item!r} is not name=exit|raise|fail|on|stall[@n]")
        armed[name] = (action, int(nth) if nth else None)
    return armed


def arm(spec: str) -> None:
    _armed.clear()
    _armed.update({name: _Armed(action, nth) for name, (action, nth) in parse(spec).items()})


def _fires(name: str) -> str | None:
    armed = _armed.get(name)
    if armed is None:
        return None
    armed.hits += 1
    return armed.action if armed.nth is None or armed.hits == armed.nth else None


def hit(name: str) -> None:
    """Act if `name` is armed with `exit`, `raise`, `fail` or `stall` (and this is its hit)."""
    action = _fires(name) if name in _armed else None
    if action == "exit":
        os._exit(137)
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
    if action == "fail":
        raise FailpointOutage(f"failpoint {name}")
    while action == "stall":  # signals interrupt the sleep and it goes on (PEP 475)
        time.sleep(3600)


def any_armed() -> bool:
    """Whether any failpoint is armed (lets a hot path skip building point names)."""
    return bool(_armed)


def enabled(name: str) -> bool:
    """True if the defect `name` is switched on (`on`)."""
    return name in _armed and _fires(name) == "on"
