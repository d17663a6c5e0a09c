"""Running sagaline CLI processes in tests, so faults (SIGKILL, SIGTERM) hit a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class CliProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, *, module: bool = False) -> None:
        """`args` go to `python -m sagaline`, or straight to python when `module` is set."""
        self.args = args
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *(args if module else ["-m", "sagaline", *args])],
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a machine losing power."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log_file.close()

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        self._log_file.close()
        return code

    def reap(self) -> int:
        """A process that ended on its own: its exit code, its log closed."""
        code = self.proc.wait(timeout=30)
        self._log_file.close()  # closing twice is harmless
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")
