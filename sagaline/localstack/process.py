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
    """True if `pid` runs and its command line contains `marker`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in cmdline


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
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(pid_file: Path, marker: str, timeout_s: float = 30.0) -> bool:
    """SIGTERM the tracked process, SIGKILL it after `timeout_s`. True if one was stopped."""
    pid = read_pid(pid_file)
    if pid is None or not is_alive(pid, marker):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid, marker):
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        while is_alive(pid, marker) and not _reap(pid):
            time.sleep(0.1)
    _reap(pid)
    pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> bool:
    """Collect the exit status if `pid` is our child (else it is reaped by init)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid
