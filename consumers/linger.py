"""Adaptive fetch linger: let records pile up into larger units of work only while they
arrive fast enough to pile up.

A unit of work costs about the same round trips whether it holds one record or hundreds
(a transaction, a relay pass, a produce request, a fetch), so at moderate load a worker
that reacts to every record alone spends most of the machine on those fixed costs and
queues. Waiting on the broker for records to gather (a fetch's `fetch_min_bytes` and
`fetch_max_wait_ms`) amortises them, but at low load it only adds the wait to every hop.
`Linger` decides between the two from the recent arrival rate: it waits while a wait is
expected to gather at least `ENTER_EXPECTED` records, and reacts at once again when the
rate falls below `LEAVE_EXPECTED` records per wait (the gap between them keeps it from
flapping at the threshold).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

ENTER_EXPECTED = 4.0  # records a wait must be expected to gather before fetches wait
LEAVE_EXPECTED = 2.0  # below this many per wait, fetches react to every record again
WINDOW_S = 1.0  # the arrival rate is measured over this much recent time


@dataclass(frozen=True)
class FetchWait:
    """What a fetch asks of the broker: return once `min_bytes` are there or after
    `max_wait_ms`."""

    min_bytes: int
    max_wait_ms: int


class Linger:
    """Tracks records as polls return them and says how the next fetches should wait."""

    def __init__(self, wait_ms: int, *, batch_bytes: int, idle: FetchWait) -> None:
        if wait_ms <= 0:
            raise ValueError("wait_ms must be positive")
        self.wait_ms = wait_ms
        self.idle = idle
        self.busy = FetchWait(min_bytes=batch_bytes, max_wait_ms=wait_ms)
        self.lingering = False
        self._arrivals: deque[tuple[float, int]] = deque()
        self._in_window = 0

    def rate(self, now: float) -> float:
        """Records per second over the last `WINDOW_S`."""
        self._forget(now)
        return self._in_window / WINDOW_S

    def observe(self, now: float, records: int) -> FetchWait | None:
        """Count a poll's records (`now`: a monotonic clock); returns the fetch settings to
        switch to when the mode changes, else None."""
        if records:
            self._arrivals.append((now, records))
            self._in_window += records
        expected = self.rate(now) * self.wait_ms / 1000
        if not self.lingering and expected >= ENTER_EXPECTED:
            self.lingering = True
            return self.busy
        if self.lingering and expected < LEAVE_EXPECTED:
            self.lingering = False
            return self.idle
        return None

    def _forget(self, now: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now - WINDOW_S:
            self._in_window -= self._arrivals.popleft()[1]
