"""The loop supervisor: transient failures restart a loop, anything else ends the service."""

from __future__ import annotations

import asyncio
import gc

import asyncpg
import pytest

from consumers.errors import TransientError
from sagaline.runtime import awaiting, run_service, supervised


async def test_transient_failures_restart_the_loop_until_it_finishes() -> None:
    runs: list[int] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise asyncpg.CannotConnectNowError("the database system is starting up")

    await supervised("t", loop, asyncio.Event(), backoff_s=0.01)
    assert runs == [0, 1, 2]


async def test_a_permanent_failure_ends_the_supervision_at_once() -> None:
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        await supervised("t", loop, asyncio.Event(), backoff_s=0.01)
    assert runs == 1


async def test_stop_during_the_backoff_ends_quietly() -> None:
    stop = asyncio.Event()
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        asyncio.get_running_loop().call_later(0.05, stop.set)
        raise TransientError("down")

    await asyncio.wait_for(supervised("t", loop, stop, backoff_s=30), timeout=5)
    assert runs == 1


@pytest.mark.parametrize(("event_loop", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_a_service_runs_on_the_event_loop_its_setting_names(event_loop: str, module: str) -> None:
    async def which_loop() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert run_service(which_loop(), event_loop) == module


def test_a_service_starts_with_its_start_up_heap_frozen_out_of_collections() -> None:
    async def frozen() -> int:
        return gc.get_freeze_count()

    gc.unfreeze()
    try:
        assert run_service(frozen(), "asyncio") > 1000  # modules, schemas, validators
    finally:
        gc.unfreeze()  # the test process goes on collecting as before


async def test_a_task_that_will_not_stop_is_reported_with_where_it_waits() -> None:
    never = asyncio.Event()

    async def commit_offsets() -> None:
        await never.wait()

    async def handle_batch() -> None:
        await commit_offsets()

    task = asyncio.create_task(handle_batch())
    await asyncio.sleep(0)
    where = awaiting(task)
    task.cancel()
    assert where.startswith(
        "test_a_task_that_will_not_stop_is_reported_with_where_it_waits.<locals>.handle_batch:"
    )
    assert "<locals>.commit_offsets:" in where
    assert "Event.wait:" in where
    assert "Future" in where.split(" > ")[-1]  # what Event.wait waits on
