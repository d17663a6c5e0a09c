"""`sagaline up`'s supervision of its child processes (real processes, no broker needed):
a crashed service is restarted with backoff and the others keep running; one that keeps
crashing is given up on with a clear message."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from producers.connection import KafkaConnection
from sagaline import platform as platform_module
from sagaline.bootstrap import Endpoints
from sagaline.platform import Platform


class _Scripted(Platform):
    """Children run small scripts instead of `sagaline worker`: `crash` exits 3 at once,
    `flaky` exits 3 the first time and runs after, `steady` runs."""

    def __init__(self, tmp: Path, services: tuple[str, ...]) -> None:
        ends = Endpoints(KafkaConnection(bootstrap_servers="127.0.0.1:1"), "postgresql://unused", local=False)
        super().__init__(ends, tmp, 0, services)
        self.spawned: dict[str, int] = {}

    def _spawn(self, name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
        self.spawned[name] = self.spawned.get(name, 0) + 1
        crashes = name == "crash" or (name == "flaky" and self.spawned[name] == 1)
        code = "raise SystemExit(3)" if crashes else "import time; time.sleep(60)"
        with log.open("ab") as out:
            return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)


def _supervise_for(platform: Platform, seconds: float) -> list[str]:
    events: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        events += platform.supervise()
        time.sleep(0.02)
    return events


def test_a_crashed_service_is_restarted_and_the_others_keep_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform_module, "RESTART_BACKOFF_S", 0.05)
    platform = _Scripted(tmp_path, ("flaky", "steady"))
    platform.start()
    try:
        events = _supervise_for(platform, 1.0)
        assert events[0] == "worker flaky exited with 3; restarting it in 0.1s"
        assert events[1].startswith("worker flaky restarted (pid ")
        assert len(events) == 2
        assert all(child.process.poll() is None for child in platform.children)
        assert platform.spawned == {"flaky": 2, "steady": 1}
    finally:
        platform.stop(deadline_s=5)


def test_a_service_that_keeps_crashing_is_given_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform_module, "RESTART_BACKOFF_S", 0.01)
    monkeypatch.setattr(platform_module, "RESTART_BACKOFF_MAX_S", 0.05)
    platform = _Scripted(tmp_path, ("crash", "steady"))
    platform.start()
    try:
        with pytest.raises(RuntimeError, match=r"worker crash exited 6 times within 120s \(last code 3\)"):
            _supervise_for(platform, 10.0)
        assert platform.spawned["crash"] == platform_module.MAX_RESTARTS + 1
        assert platform.children[1].process.poll() is None  # the steady one never noticed
    finally:
        platform.stop(deadline_s=5)
