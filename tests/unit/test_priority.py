"""`lower_priority`: a projection's process yields CPU to the saga's path, and never takes
back a priority it was started without. Each case runs in a child process: niceness cannot
be lowered back in the test's own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sagaline.settings import Settings

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="POSIX priorities only")


def _run(code: str, start_nice: int = 0) -> str:
    def start() -> None:
        os.nice(start_nice)

    done = subprocess.run(
        [sys.executable, "-c", f"from sagaline.runtime import lower_priority\n{code}"],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=start if start_nice else None,
        timeout=60,
    )
    return done.stdout.strip()


def test_a_process_lowers_itself_and_the_threads_it_starts_after_inherit_it() -> None:
    code = """
import os, threading
before = os.getpriority(os.PRIO_PROCESS, 0)
print(before, lower_priority(before + 7), end=" ")
seen = []
thread = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
thread.start(); thread.join()
print(seen[0])
"""
    before, after, thread = map(int, _run(code).split())
    assert after == before + 7
    assert thread == after


def test_priority_is_never_raised_back() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _run("print(lower_priority(0))", start_nice=12) == str(base + 12)
    assert _run(f"print(lower_priority({base + 5}), lower_priority({base + 2}))") == f"{base + 5} {base + 5}"


def test_projections_run_at_nice_10_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().projection_nice == 10
    monkeypatch.setenv("SAGALINE_PROJECTION_NICE", "0")
    assert Settings().projection_nice == 0
    monkeypatch.setenv("SAGALINE_PROJECTION_NICE", "20")
    with pytest.raises(ValueError, match="projection_nice"):
        Settings()
