"""The adaptive fetch linger: when fetches wait for records to pile up, and that the wait
reaches the fetch requests aiokafka builds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from prometheus_client import CollectorRegistry

from consumers import worker as worker_module
from consumers.errors import classify
from consumers.lanes import Lanes
from consumers.linger import (
    ENTER_EXPECTED,
    FILL_SHARE,
    LEAVE_EXPECTED,
    RETUNE_SHARE,
    SPARE_BELOW,
    SPARE_UNTIL,
    WINDOW_S,
    CpuMeter,
    FetchWait,
    Linger,
)
from consumers.metrics import ConsumerMetrics
from consumers.worker import (
    ConsumerStalled,
    Worker,
    WorkerOptions,
    _can_set_fetch_wait,
    _Rebalance,
    _records_and_bytes,
    _refresh_metadata,
    _set_fetch_wait,
)

IDLE = FetchWait(min_bytes=1, max_wait_ms=500)
CAP = 256 * 1024
SIZE = 500  # bytes a record


def linger(wait_ms: int = 50) -> Linger:
    return Linger(wait_ms, batch_bytes=CAP, idle=IDLE)


def feed(
    tracker: Linger,
    start: float,
    per_s: float,
    seconds: float,
    size: int = SIZE,
    machine_busy: float | None = 0.0,
) -> list[FetchWait]:
    """One record of `size` bytes per poll at `per_s`, each with a reading of how busy the
    machine is (default: idle, CPU to spare); the fetch settings it switched to."""
    changes = []
    n = int(per_s * seconds)
    for i in range(n):
        change = tracker.observe(start + i / per_s, 1, size, machine_busy)
        if change is not None:
            changes.append(change)
    return changes


def share_of_a_wait(per_s: float, wait_ms: int = 50, size: int = SIZE) -> float:
    """What a lingering fetch should wait for at a steady `per_s`."""
    return FILL_SHARE * per_s * size * wait_ms / 1000


def test_a_trickle_never_lingers() -> None:
    tracker = linger(50)
    below = ENTER_EXPECTED / 0.050 * 0.9  # records/s just under what a 50 ms wait must gather
    assert feed(tracker, 0.0, below, 5.0) == []
    assert not tracker.lingering


def test_a_stream_that_a_wait_would_gather_lingers_for_a_share_of_what_the_wait_gathers() -> None:
    tracker = linger(50)
    per_s = ENTER_EXPECTED / 0.050 * 2
    changes = feed(tracker, 0.0, per_s, 2.0)
    assert tracker.lingering
    assert changes
    assert all(change.max_wait_ms == 50 for change in changes)
    # a burst of this much (about a unit of work upstream) ends the wait; a steady stream
    # fills it in FILL_SHARE of the wait
    assert abs(tracker.current.min_bytes - share_of_a_wait(per_s)) <= RETUNE_SHARE * share_of_a_wait(per_s)
    assert changes[-1] == tracker.current


def test_when_records_start_to_flow_the_first_lingering_fetch_is_not_sized_for_a_trickle() -> None:
    """The rate is taken over the time the polls cover: 0.1 s into a stream, not over a
    one-second window that is mostly empty (which would make fetches return after a few
    records, many small units of work just as the load arrives)."""
    tracker = linger(50)
    per_s = 2000.0
    entered = feed(tracker, 0.0, per_s, 0.1)[0]
    assert entered.max_wait_ms == 50
    assert entered.min_bytes >= share_of_a_wait(per_s) / 3  # over a whole window: a tenth


def test_the_share_follows_the_rate_and_stops_at_the_cap() -> None:
    tracker = linger(50)
    feed(tracker, 0.0, 400, 2.0)
    before = tracker.current.min_bytes
    assert abs(before - share_of_a_wait(400)) <= RETUNE_SHARE * share_of_a_wait(400)
    assert feed(tracker, 2.0, 400, 2.0) == []  # a steady rate: the fetches are not retold
    faster = feed(tracker, 4.0, 1200, 2.0)
    assert faster
    assert faster[-1].min_bytes > 2 * before
    feed(tracker, 6.0, 1200, 2.0, size=100_000)
    assert tracker.busy(8.0) == FetchWait(CAP, 50)  # 4 MB a wait: the most a fetch waits for


def test_a_busy_machine_lingers_for_the_whole_wait_until_it_has_cpu_to_spare_again() -> None:
    """The share costs more units of work: it is for a machine with CPU to spare. Between
    the two thresholds the last mode holds, and no reading (None) changes nothing."""
    tracker = linger(50)
    per_s = 1000.0
    assert feed(tracker, 0.0, per_s, 1.0, machine_busy=None) == [FetchWait(CAP, 50)]  # not known: no
    assert not tracker.spare
    spare = feed(tracker, 1.0, per_s, 1.0, machine_busy=SPARE_BELOW - 0.1)
    assert tracker.spare
    assert spare[0].min_bytes < CAP
    between = (SPARE_BELOW + SPARE_UNTIL) / 2
    assert feed(tracker, 2.0, per_s, 1.0, machine_busy=between) == []
    assert feed(tracker, 3.0, per_s, 1.0, machine_busy=SPARE_UNTIL + 0.05) == [FetchWait(CAP, 50)]
    assert not tracker.spare
    assert feed(tracker, 4.0, per_s, 1.0, machine_busy=between) == []
    assert not tracker.spare
    assert feed(tracker, 5.0, per_s, 0.1, machine_busy=SPARE_BELOW - 0.01)[0].min_bytes < CAP


def test_the_cpu_meter_reads_the_busy_share_between_two_readings(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    meter = CpuMeter(str(stat), interval_s=1.0)

    def write(user: int, system: int, idle: int, iowait: int) -> None:
        stat.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4\n")

    write(100, 50, 800, 50)
    assert meter.reading(10.0) is None  # the first: nothing to compare with
    write(160, 80, 830, 60)  # 90 busy ticks of 130
    assert meter.reading(10.5) is None  # within the interval
    assert meter.reading(11.0) == pytest.approx(90 / 130)
    stat.unlink()
    assert meter.reading(12.0) is None
    assert CpuMeter(str(tmp_path / "none")).reading(0.0) is None


def test_between_the_thresholds_the_mode_holds_either_way() -> None:
    between = (ENTER_EXPECTED + LEAVE_EXPECTED) / 2 / 0.050  # records/s
    idle = linger(50)
    assert feed(idle, 0.0, between, 3.0) == []  # not enough to start lingering
    busy = linger(50)
    assert feed(busy, 0.0, ENTER_EXPECTED / 0.050 * 3, 2.0)  # lingering now
    slower = feed(busy, 2.0, between, 3.0)  # slower, but not enough to flap back
    assert busy.lingering
    assert all(change.max_wait_ms == 50 for change in slower)  # a smaller share, still lingering


def test_when_records_stop_the_next_empty_poll_reacts_to_every_record_again() -> None:
    tracker = linger(50)
    feed(tracker, 0.0, 1000, 1.0)
    assert tracker.lingering
    fewer = tracker.observe(1.0 + WINDOW_S / 2, 0)  # the last second still counts: a smaller share
    assert tracker.lingering
    assert fewer is None or fewer.max_wait_ms == 50
    assert tracker.observe(1.0 + WINDOW_S + 0.01, 0) == IDLE
    assert not tracker.lingering
    assert tracker.rate(1.0 + WINDOW_S + 0.01) == 0


def test_the_rate_counts_every_record_of_a_poll() -> None:
    tracker = linger(50)
    tracker.observe(10.0, 300, 300 * SIZE)
    tracker.observe(10.5, 200, 200 * SIZE)
    assert tracker.rate(10.6) == 500 / WINDOW_S
    assert tracker.rate(11.2) == 200 / WINDOW_S


def test_a_poll_is_sized_by_its_keys_values_and_headers() -> None:
    def record(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> Any:
        return ConsumerRecord(
            "t", 0, 0, 0, 0, key, value, None, len(key) if key else -1, len(value) if value else -1, headers
        )

    batch = {
        TopicPartition("t", 0): [record(b"o-1", b"{}", [("ce_type", b"OrderPlaced")])],
        TopicPartition("t", 1): [record(None, b"12345", [("empty", None)]), record(None, None, [])],
    }
    assert _records_and_bytes(batch) == (3, (3 + 2 + 7 + 11) + (5 + 5) + 0)


def test_a_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="wait_ms"):
        Linger(0, batch_bytes=1, idle=IDLE)


async def test_the_wait_reaches_the_fetch_requests_aiokafka_builds() -> None:
    """Pins aiokafka's fetcher fields `_set_fetch_wait` sets: the next fetch request built
    for a partition carries the new wait and minimum size."""
    tp = TopicPartition("t", 0)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client: Any = SimpleNamespace(
        _loop=asyncio.get_running_loop(),
        _metadata_max_age_ms=300_000,
        cluster=SimpleNamespace(leader_for_partition=lambda _tp: 1, broker_metadata=lambda _n: object()),
    )
    subscriptions: Any = SimpleNamespace(
        subscription=None, register_fetch_waiters=lambda _w: None, wait_for_assignment=lambda: never
    )
    fetcher = Fetcher(client, subscriptions, fetch_min_bytes=1, fetch_max_wait_ms=500)
    try:
        consumer: Any = SimpleNamespace(_fetcher=fetcher)
        assert _can_set_fetch_wait(consumer)
        _set_fetch_wait(consumer, FetchWait(min_bytes=262_144, max_wait_ms=50))
        state = SimpleNamespace(has_valid_position=True, paused=False, position=7)
        assignment = SimpleNamespace(tps=[tp], state_value=lambda _tp: state)
        requests = fetcher._get_actions_per_node(assignment)[0]
        [(node, request)] = requests
        assert node == 1
        assert (request._max_wait_ms, request._min_bytes) == (50, 262_144)
    finally:
        fetcher._fetch_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetcher._fetch_task
        never.cancel()


def test_a_consumer_without_those_fields_is_reported() -> None:
    assert not _can_set_fetch_wait(SimpleNamespace(_fetcher=SimpleNamespace()))


class _Client:
    """The client call `_refresh_metadata` makes, counted."""

    def __init__(self) -> None:
        self.refreshes = 0

    def force_metadata_update(self) -> None:
        self.refreshes += 1


class _Consumer:
    """The calls the position check makes, for partitions whose position is known
    (`positions`) or never comes (the rest of `assigned`)."""

    def __init__(self, assigned: set[TopicPartition], positions: dict[TopicPartition, int]) -> None:
        self.assigned, self.positions = assigned, positions
        self._client = _Client()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def highwater(self, tp: TopicPartition) -> int:
        return 10

    async def position(self, tp: TopicPartition) -> int:
        if tp not in self.positions:
            await asyncio.Event().wait()  # aiokafka's position() waits for as long as it has none
        return self.positions[tp]


def _worker(stall_after_s: float, registry: CollectorRegistry, refresh_after_s: float = 3.0) -> Worker:
    options = WorkerOptions(
        topics=("t",), stall_after_s=stall_after_s, refresh_metadata_after_s=refresh_after_s
    )
    unused: Any = None
    return Worker(unused, unused, unused, Lanes("g"), options, ConsumerMetrics(registry))


async def _check(worker: Worker, consumer: Any) -> None:
    worker._lag_observed = 0.0  # as if a second had passed
    await worker._observe_positions(consumer)


async def test_a_partition_without_a_position_for_too_long_ends_the_loop_as_transient() -> None:
    registry = CollectorRegistry()
    worker = _worker(0.5, registry)
    ok, stuck = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer: Any = _Consumer({ok, stuck}, {ok: 7})
    await _check(worker, consumer)  # the clock starts
    assert (
        registry.get_sample_value("sagaline_consumer_lag", {"group": "g", "topic": "t", "partition": "0"})
        == 3
    )
    await asyncio.sleep(0.2)
    await _check(worker, consumer)  # not long enough yet
    await asyncio.sleep(0.4)
    with pytest.raises(ConsumerStalled, match=r"no position for t\[1\]") as raised:
        await _check(worker, consumer)
    assert classify(raised.value) == "transient"  # the supervisor restarts the loop


async def test_a_position_that_comes_back_resets_the_clock() -> None:
    worker = _worker(0.5, CollectorRegistry())
    tp = TopicPartition("t", 0)
    consumer: Any = _Consumer({tp}, {})
    await _check(worker, consumer)
    await asyncio.sleep(0.3)
    consumer.positions[tp] = 1  # found its position (a rebalance, a slow lookup)
    await _check(worker, consumer)
    del consumer.positions[tp]
    await asyncio.sleep(0.3)
    await _check(worker, consumer)  # 0.6 s since the first miss, but only 0.3 s since the last
    await asyncio.sleep(0.3)
    with pytest.raises(ConsumerStalled):
        await _check(worker, consumer)


async def test_a_partition_without_a_position_asks_for_fresh_metadata_once_an_interval() -> None:
    worker = _worker(10.0, CollectorRegistry(), refresh_after_s=0.3)
    tp = TopicPartition("t", 0)
    consumer: Any = _Consumer({tp}, {})
    await _check(worker, consumer)  # the clock starts
    assert consumer._client.refreshes == 0
    await asyncio.sleep(0.35)
    await _check(worker, consumer)
    assert consumer._client.refreshes == 1
    await _check(worker, consumer)  # within the interval: not again
    assert consumer._client.refreshes == 1
    await asyncio.sleep(0.35)
    await _check(worker, consumer)  # still none: again
    assert consumer._client.refreshes == 2
    consumer.positions[tp] = 3  # found (the new leader answered)
    await asyncio.sleep(0.35)
    await _check(worker, consumer)
    assert consumer._client.refreshes == 2


async def test_aiokafka_can_still_be_asked_for_fresh_metadata() -> None:
    """`_refresh_metadata` reaches into aiokafka: its client's synchronizer must wake."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")  # never started: no I/O
    try:
        waiter = consumer._client._md_update_waiter
        assert not waiter.done()
        assert _refresh_metadata(consumer)
        assert waiter.done()
    finally:
        await consumer.stop()
    assert not _refresh_metadata(cast(Any, SimpleNamespace(_client=SimpleNamespace())))


class _StuckCommits:
    """A consumer whose offset commits never return (aiokafka retrying a dead coordinator)."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)
        await asyncio.Event().wait()


async def test_a_commit_that_never_returns_ends_the_loop_as_transient_and_keeps_the_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "COMMIT_TIMEOUT_S", 0.2)
    worker = _worker(60, CollectorRegistry())
    tp = TopicPartition("t", 0)
    worker._applied = {tp: 8}
    consumer: Any = _StuckCommits()
    with pytest.raises(ConsumerStalled, match="an offset commit did not return") as raised:
        await worker._commit_applied(consumer)
    assert classify(raised.value) == "transient"  # a new consumer; the inbox drops what comes again
    assert consumer.commits == [{tp: 8}]
    assert worker._applied == {tp: 8}  # still to commit


async def test_partitions_go_after_a_bounded_wait_for_a_commit_that_never_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rebalance listener runs inside aiokafka's coordination task, which closing the
    consumer waits for: a commit stuck there would hold the consumer open for ever."""
    monkeypatch.setattr(worker_module, "REVOKE_COMMIT_TIMEOUT_S", 0.2)
    worker = _worker(60, CollectorRegistry())
    tp = TopicPartition("t", 0)
    worker._applied = {tp: 8}
    worker._consumer = cast(Any, _StuckCommits())
    await asyncio.wait_for(_Rebalance(worker).on_partitions_revoked([tp]), 5)
    assert worker._applied == {}  # revoked: the next owner starts from the last commit
