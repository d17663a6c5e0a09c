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

While the machine has CPU to spare, a lingering fetch returns after the wait or as soon as
`FILL_SHARE` of the bytes the wait is expected to gather (at the recent rate) are there,
whichever comes first. Records from another service arrive in bursts, one per unit of work
of the service upstream (all that its transaction staged, sent at once): a burst that
brings the fetch to its share ends the wait, so its records are not held for the rest of
it; a steady stream (upstream requests) still gathers for most of the wait. That costs more
units of work, so it is for a machine with CPU to spare: once the machine is busier than
`SPARE_UNTIL` of its CPU time (over the last second), a lingering fetch waits for the whole
wait (or `batch_bytes`) again, until the machine is below `SPARE_BELOW` (docs/benchmarks.md,
twenty-second step: on two cores it about halved the saga p99 at 300 orders/s; without the
CPU condition it made the half and three-quarter loads worse, where the machine had no CPU
left for the extra units).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

ENTER_EXPECTED = 4.0  # records a wait must be expected to gather before fetches wait
LEAVE_EXPECTED = 2.0  # below this many per wait, fetches react to every record again
WINDOW_S = 1.0  # the arrival rate is measured over this much recent time
FILL_SHARE = 0.7  # with CPU to spare, a lingering fetch returns once this share of a wait's bytes is there
RETUNE_SHARE = 0.25  # ... and is told a new amount when the expected bytes move by more than this
SPARE_BELOW = 0.70  # the machine's CPU has room for that while less busy than this share of its time
SPARE_UNTIL = 0.80  # ... and no longer once busier than this (in between, the last mode holds)


@dataclass(frozen=True)
class FetchWait:
    """What a fetch asks of the broker: return once `min_bytes` are there or after
    `max_wait_ms`."""

    min_bytes: int
    max_wait_ms: int


class Linger:
    """Tracks records as polls return them and says how the next fetches should wait."""

    def __init__(self, wait_ms: int, *, batch_bytes: int, idle: FetchWait) -> None:
        """`batch_bytes`: the most a lingering fetch waits for, however fast records come."""
        if wait_ms <= 0:
            raise ValueError("wait_ms must be positive")
        self.wait_ms = wait_ms
        self.idle = idle
        self.batch_bytes = batch_bytes
        self.lingering = False
        self.spare = False  # the machine has CPU to spare: lingering fetches return at their share
        self.current = idle  # what the fetches were last told
        self._arrivals: deque[tuple[float, int, int]] = deque()
        self._in_window = 0
        self._bytes_in_window = 0

    def rate(self, now: float) -> float:
        """Records per second over the last `WINDOW_S`."""
        self._forget(now)
        return self._in_window / WINDOW_S

    def busy(self, now: float) -> FetchWait:
        """How a lingering fetch waits: for the wait or `batch_bytes`; with CPU to spare, only
        until `FILL_SHARE` of the bytes a wait is expected to gather at the recent rate are
        there (at least 1). The rate is taken over the time the window's polls cover, so that
        when records start to flow it is not underestimated (and the fetches not made to
        return after a few records)."""
        if not self.spare:
            return FetchWait(self.batch_bytes, self.wait_ms)
        self._forget(now)
        wait_s = self.wait_ms / 1000
        covered = min(now - self._arrivals[0][0] + wait_s, WINDOW_S) if self._arrivals else WINDOW_S
        expected = self._bytes_in_window / covered * wait_s
        return FetchWait(min(max(int(expected * FILL_SHARE), 1), self.batch_bytes), self.wait_ms)

    def observe(
        self, now: float, records: int, size: int = 0, machine_busy: float | None = None
    ) -> FetchWait | None:
        """Count a poll's records and their bytes (`size`: keys, values and headers; `now`:
        a monotonic clock); `machine_busy`: the share of the machine's CPU time that was busy
        lately, when there is a new reading (`CpuMeter`). Returns the fetch settings to switch
        to when they change, else None."""
        if machine_busy is not None:
            self.spare = machine_busy < SPARE_BELOW or (self.spare and machine_busy <= SPARE_UNTIL)
        if records:
            self._arrivals.append((now, records, size))
            self._in_window += records
            self._bytes_in_window += size
        expected = self.rate(now) * self.wait_ms / 1000
        if not self.lingering:
            if expected < ENTER_EXPECTED:
                return None
            self.lingering = True
            return self._switch(self.busy(now))
        if expected < LEAVE_EXPECTED:
            self.lingering = False
            return self._switch(self.idle)
        busy = self.busy(now)
        if abs(busy.min_bytes - self.current.min_bytes) > RETUNE_SHARE * self.current.min_bytes:
            return self._switch(busy)
        return None

    def _switch(self, wait: FetchWait) -> FetchWait:
        self.current = wait
        return wait

    def _forget(self, now: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now - WINDOW_S:
            _, records, size = self._arrivals.popleft()
            self._in_window -= records
            self._bytes_in_window -= size


class CpuMeter:
    """How busy this machine's CPUs were between two readings, from Linux's /proc/stat (all
    CPUs; the time not idle and not waiting for I/O). On a system without it, or in a
    container whose CPU quota is below the host's, it says nothing or too little: the linger
    then never counts on spare CPU, or counts on the host's."""

    def __init__(self, path: str = "/proc/stat", interval_s: float = WINDOW_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._last: tuple[float, int, int] | None = None  # when, busy ticks, all ticks

    def reading(self, now: float) -> float | None:
        """The busy share since the last reading, at most once an `interval_s` (`now`: a
        monotonic clock); None between readings, on the first, or without /proc/stat."""
        if self._last is not None and now - self._last[0] < self.interval_s:
            return None
        try:
            with open(self.path, "rb") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if len(fields) < 6 or fields[0] != b"cpu":
            return None
        ticks = [int(field) for field in fields[1:9]]  # user nice system idle iowait irq softirq steal
        total, idle = sum(ticks), ticks[3] + ticks[4]
        last, self._last = self._last, (now, total - idle, total)
        if last is None or total <= last[2]:
            return None
        return (total - idle - last[1]) / (total - last[2])
