"""Background processes the local stack starts, tracked by pid files.

`stop` only ever signals a pid whose command line still carries the marker we started
it with, so a recycled pid never takes down somebody else's process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class MissingToolError(RuntimeError):
    """A program the local stack needs is not installed; the message says what to install."""


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of `name` or raise `MissingToolError` naming what to install."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"{name} not found: install {install_hint}")
    return path


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_alive(pid: int, marker: str) -> bool:
    """True if `pid` runs (a zombie does not) and its command line contains `marker`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and marker.encode() in cmdline


# Popen handles of servers this process started: kept so they can be reaped on stop
# (and so Python does not warn about dropping a running child).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: Sequence[str], log_file: Path, pid_file: Path) -> int:
    """Start `argv` detached from our session, output appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(pid_file: Path, marker: str, timeout_s: float = 30.0) -> bool:
    """SIGTERM the tracked process, SIGKILL it after `timeout_s`. True if one was stopped."""
    return bool(stop_all([(pid_file, marker)], timeout_s))


def stop_all(targets: Sequence[tuple[Path, str]], timeout_s: float = 30.0) -> list[Path]:
    """Stop several tracked processes at once (a KRaft quorum must go down together:
    a lone survivor waits for controllers that are gone). Returns the pid files stopped."""
    running: dict[int, tuple[Path, str]] = {}
    for pid_file, marker in targets:
        pid = read_pid(pid_file)
        if pid is not None and is_alive(pid, marker):
            running[pid] = (pid_file, marker)
        else:
            if pid is not None:
                _reap(pid)  # it exited on its own: collect its status if it was our child
            pid_file.unlink(missing_ok=True)
    for pid in running:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    alive = set(running)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            _reap(pid)
            if not is_alive(pid, running[pid][1]):
                alive.discard(pid)
        time.sleep(0.2)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    for pid, (pid_file, marker) in running.items():
        while is_alive(pid, marker) and not _reap(pid):
            time.sleep(0.1)
        _reap(pid)
        pid_file.unlink(missing_ok=True)
    return [pid_file for pid_file, _ in running.values()]


def _reap(pid: int) -> bool:
    """Collect the exit status if `pid` is our child (else it is reaped by init)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return False
        del _children[pid]
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid
