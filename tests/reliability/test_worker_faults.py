"""The consumer runtime under process faults: SIGKILL, SIGTERM, rebalances mid-load."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from producers.connection import KafkaConnection
from tests.processes import CliProcess
from tests.support import committed, wait_until
from tests.worker_support import LedgerService, placed

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def service(kafka: KafkaConnection, postgres_dsn: str, unique: str) -> AsyncIterator[LedgerService]:
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5, 1.0, 1.5))
    await service.setup()
    yield service
    await service.close()


def _worker(service: LedgerService, log: Path, max_records: int = 500) -> CliProcess:
    env = {**service.cli_env(), "SAGALINE_WORKER_MAX_RECORDS": str(max_records)}
    return CliProcess(["-m", "tests.workers.ledger", *service.cli_args()], env, log, module=True)


async def _applied_exactly_once(service: LedgerService, orders: int) -> None:
    assert await service.ledger_rows() == orders
    assert await service.scalar("SELECT count(DISTINCT order_id) FROM {s}.ledger") == orders
    assert await service.scalar("SELECT count(*) FROM {s}.outbox") == orders
    assert await service.scalar("SELECT count(*) FROM {s}.inbox") == orders


async def test_sigkill_mid_batch_then_restart_applies_every_message_exactly_once(
    service: LedgerService, tmp_path: Path
) -> None:
    """Setup: 1,500 orders, each handled slowly (2 ms inside the transaction). Fault: the
    worker process is SIGKILLed while batches are in flight. Validate: after a restart every
    order is applied exactly once: one ledger row, one outbox row, one inbox row each."""
    orders = 1500
    await service.publish([placed(f"o-{i}", customer="slow-2") for i in range(orders)])
    first = _worker(service, tmp_path / "w1.log")

    async def started() -> bool:
        return await service.scalar("SELECT to_regclass($1) IS NOT NULL", f"{service.schema}.ledger") and (
            await service.ledger_rows() > 100
        )

    await wait_until(started, timeout_s=60)
    first.kill()
    done_at_kill = await service.ledger_rows()
    assert done_at_kill < orders, "the kill must land mid-stream"

    second = _worker(service, tmp_path / "w2.log")

    async def all_applied() -> bool:
        return await service.ledger_rows() >= orders

    await wait_until(all_applied, timeout_s=120)
    assert second.terminate() == 0, second.output()
    await _applied_exactly_once(service, orders)


async def test_sigterm_exits_cleanly_and_committed_offsets_equal_processed_messages(
    service: LedgerService, kafka: KafkaConnection, tmp_path: Path
) -> None:
    """Setup: 1,000 slow orders, at most 50 records a unit of work (a graceful stop finishes
    the batch in hand: with the default 500 it could finish the whole stream). Fault: SIGTERM
    while batches are in flight. Validate: exit code 0 within the deadline, and the group's
    committed offsets equal the messages applied — nothing applied without its commit,
    nothing committed without being applied. A restart finishes the rest exactly once."""
    orders = 1000
    await service.publish([placed(f"o-{i}", customer="slow-5") for i in range(orders)])
    worker = _worker(service, tmp_path / "w.log", max_records=50)

    async def some_applied() -> bool:
        return await service.scalar("SELECT to_regclass($1) IS NOT NULL", f"{service.schema}.ledger") and (
            await service.ledger_rows() > 50
        )

    await wait_until(some_applied, timeout_s=60)
    assert worker.terminate(timeout_s=25) == 0, worker.output()
    applied = await service.ledger_rows()
    assert 0 < applied < orders
    assert await committed(kafka, service.group, service.topic) == applied
    assert "stopped cleanly" in worker.output()

    again = _worker(service, tmp_path / "w2.log")

    async def all_applied() -> bool:
        return await service.ledger_rows() >= orders

    await wait_until(all_applied, timeout_s=120)
    assert again.terminate() == 0
    await _applied_exactly_once(service, orders)
    assert await committed(kafka, service.group, service.topic) == orders


async def test_two_workers_with_rebalances_mid_load_lose_nothing_and_apply_nothing_twice(
    service: LedgerService, tmp_path: Path
) -> None:
    """Setup: one worker consuming 3,000 slow orders. Fault: a second worker joins the group
    mid-load (rebalance), later the first leaves with SIGTERM (another rebalance), and the
    second is SIGKILLed and replaced. Validate: every order applied exactly once."""
    orders = 3000
    await service.publish([placed(f"o-{i}", customer="slow-1") for i in range(orders)])
    a = _worker(service, tmp_path / "a.log")

    async def progressed(n: int) -> bool:
        return await service.scalar("SELECT to_regclass($1) IS NOT NULL", f"{service.schema}.ledger") and (
            await service.ledger_rows() > n
        )

    await wait_until(lambda: progressed(300), timeout_s=60)
    b = _worker(service, tmp_path / "b.log")
    await wait_until(lambda: progressed(1200), timeout_s=120)
    assert a.terminate() == 0, a.output()
    await wait_until(lambda: progressed(1800), timeout_s=120)
    b.kill()
    c = _worker(service, tmp_path / "c.log")

    async def all_applied() -> bool:
        return await service.ledger_rows() >= orders

    await wait_until(all_applied, timeout_s=180)
    assert c.terminate() == 0, c.output()
    await _applied_exactly_once(service, orders)
