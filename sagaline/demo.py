"""The demo: publish N orders as an upstream would, wait for every saga to end, summarise,
and check the invariants.

Decline and stock-out rates are shaped by the data: a declined order belongs to a customer
with an empty account; a stock-out order asks for a scarce SKU (a few units for many
orders). Some customers cancel shortly after ordering, so cancellations land at every step.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request

from producers.connection import KafkaConnection
from producers.db import DbConnection, qualified
from producers.publisher import Publisher
from sagas import invariants, seed
from sagas.config import SagaConfig
from schemas.messages import CancelOrder, PlaceOrder
from schemas.values import LineItem

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DemoOptions:
    orders: int = 1000
    decline_rate: float = 0.1
    stockout_rate: float = 0.1
    cancel_rate: float = 0.05
    concurrency: int = 200
    """Orders in flight at once (published, not yet acknowledged by the broker)."""
    timeout_s: float = 300.0
    seed: int | None = None
    rate: float | None = None
    """Orders per second, open loop (each published at its scheduled time, whatever the
    system's state), so latency means time in the saga; None publishes all at once."""
    tracker_trail: bool = False
    """After the last saga ends, wait until the tracker's projection shows every saga ended
    too (before `ended` is called, so a measured window holds the tracker's work for the
    run), and report how long after the saga path that was (`tracker_trail_s`)."""


SERVICES = ("order", "payment", "inventory")  # the saga's participants: whose outbox feeds whose inbox


_UpToV2: TypeAlias = DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2


class _DescribeGroups(Request[_UpToV2]):  # type: ignore[misc]  # aiokafka's Request is Any to mypy
    """DescribeGroups up to v2. aiokafka 0.14 reads a v3 response with the v2 schema (its
    `DescribeGroupsRequest_v3.RESPONSE_TYPE`), which fails on a broker that answers v3 (Kafka
    3.9: "Buffer underrun decoding string"), so `describe_consumer_groups` cannot be used."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self.groups = groups

    def build(self, request_struct_class: type[_UpToV2]) -> _UpToV2:
        return request_struct_class(self.groups)


async def absent_services(kafka: KafkaConnection, config: SagaConfig, wait_s: float = 10.0) -> list[str]:
    """The participants whose consumer group has no member (no process of that service is
    running for this deployment), after waiting up to `wait_s` for them to join: a platform
    started a moment ago may still be joining. `kafka` must be allowed to describe groups."""
    groups = {service: config.group(service) for service in SERVICES}
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        deadline = time.monotonic() + wait_s
        while True:
            members: dict[str, int] = {}
            for group_id in groups.values():
                coordinator = await admin.find_coordinator(group_id)
                response = await admin._send_request(_DescribeGroups([group_id]), coordinator)
                for group in response.to_object()["groups"]:
                    members[group["group"]] = len(group["members"])
            absent = [service for service, group in groups.items() if not members.get(group)]
            if not absent or time.monotonic() >= deadline:
                return absent
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


@dataclass
class DemoResult:
    run_id: str
    orders: int
    outcomes: dict[str, int]
    open_sagas: int
    seconds: float
    sagas_per_s: float
    latency_ms: dict[str, float]
    """A saga's latency: from its last request published (its PlaceOrder, or the CancelOrder
    of an order its customer cancels: the wait before a customer cancels is not the saga's)
    to its terminal state in the order service."""
    invariants: invariants.InvariantReport
    order_ids: list[str] = field(repr=False, default_factory=list)
    offered_rate: float | None = None
    by_second_ms: dict[str, float] = field(default_factory=dict)
    """Open loop only: the latency's p99 within each second of requests (by when a saga's
    last request was published), as the median over the run's seconds and the worst one
    (`worst_at_s`: seconds after the first request). A stall shows as a worst second far above
    the median; a load the platform cannot keep up with, as a median that climbs."""
    hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    """Where the latency went, filled in by `measure_hops` (after the run, so that measuring
    costs outside its window): for each hop (`request→order`: published → the order row
    written; `order→payment` and so on: staged in the outbox → claimed in the next service's
    inbox, which includes the commit, the relay, the broker and the fetch), the hop's
    percentiles over this run's sagas and how many there were (`n`)."""
    placed_at: dict[str, datetime] = field(repr=False, default_factory=dict)  # PlaceOrder published
    requested_at: dict[str, datetime] = field(repr=False, default_factory=dict)  # the last request
    started_at: datetime | None = field(repr=False, default=None)
    tracker_trail_s: float | None = None
    """With `DemoOptions.tracker_trail`: seconds from the last saga's end in the order
    service to the tracker showing every saga ended (the timeout, if it never did; None if
    a saga never ended)."""

    @property
    def ok(self) -> bool:
        return self.open_sagas == 0 and self.invariants.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "run_id": self.run_id,
            "orders": self.orders,
            "outcomes": self.outcomes,
            "open_sagas": self.open_sagas,
            "seconds": round(self.seconds, 2),
            "sagas_per_s": round(self.sagas_per_s, 1),
            "latency_ms": self.latency_ms,
            "by_second_ms": self.by_second_ms,
            "hops_ms": self.hops_ms,
            "offered_rate": self.offered_rate,
            "tracker_trail_s": None if self.tracker_trail_s is None else round(self.tracker_trail_s, 2),
            "invariants": {"checked": self.invariants.checked, "violations": self.invariants.violations},
            "money": self.invariants.figures,
        }


def _plan(
    options: DemoOptions, run_id: str
) -> tuple[list[PlaceOrder], list[tuple[str, str, int]], list[tuple[str, int]], set[str]]:
    rng = random.Random(options.seed)
    rich = [f"d{run_id}-c{i}" for i in range(max(5, options.orders // 2))]
    poor = [f"d{run_id}-poor{i}" for i in range(3)]
    skus = [f"d{run_id}-sku{i}" for i in range(20)]
    scarce = f"d{run_id}-scarce"
    accounts = [(c, "EUR", 10**9) for c in rich] + [(c, "EUR", 0) for c in poor]
    stockout_orders = round(options.orders * options.stockout_rate)
    stock = [(s, options.orders * 10) for s in skus] + [(scarce, max(1, stockout_orders // 5))]
    orders: list[PlaceOrder] = []
    for i in range(options.orders):
        roll = rng.random()
        customer = rng.choice(poor) if roll < options.decline_rate else rng.choice(rich)
        picks = rng.sample(skus, rng.randint(1, 3))
        items = [
            LineItem(sku=s, quantity=rng.randint(1, 3), unit_price_minor=rng.randint(100, 5000))
            for s in picks
        ]
        if options.decline_rate <= roll < options.decline_rate + options.stockout_rate:
            items.append(LineItem(sku=scarce, quantity=1, unit_price_minor=999))
        orders.append(
            PlaceOrder(
                order_id=f"d{run_id}-o{i}",
                idempotency_key=f"demo-{run_id}-{i}",
                customer_id=customer,
                currency="EUR",
                items=items,
            )
        )
    cancels = {o.order_id for o in orders if rng.random() < options.cancel_rate}
    return orders, accounts, stock, cancels


async def run_demo(
    kafka: KafkaConnection,
    pool: asyncpg.Pool[Any],
    config: SagaConfig,
    options: DemoOptions,
    progress: Progress | None = None,
    reader: asyncpg.Pool[Any] | None = None,
    ended: Callable[[], Awaitable[None]] | None = None,
    began: Callable[[], Awaitable[None]] | None = None,
) -> DemoResult:
    """Seed (through `pool`), publish, wait, and check the invariants — through `reader`
    when given (a read-only role: the check needs no right to write). A measurement's window
    opens when `began` is awaited (seeded, about to publish the first order) and closes when
    `ended` is (every saga has ended, or the wait timed out; before the reads that summarise
    and check them)."""
    run_id = uuid.uuid4().hex[:6]
    orders, accounts, stock, cancels = _plan(options, run_id)
    async with pool.acquire() as conn:
        await seed.migrate_all(conn, config)
        await seed.add_accounts(conn, config, accounts)
        await seed.add_stock(conn, config, stock)

    requested_at: dict[str, datetime] = {}  # order id -> when its last request was published
    placed: dict[str, datetime] = {}  # order id -> when its PlaceOrder was, for those cancelled since
    async with Publisher(kafka, source="/demo/storefront", topics=config.topics) as publisher:
        if began is not None:
            await began()
        started_at = datetime.now(UTC)
        started = time.monotonic()
        queue = iter(enumerate(orders))  # shared: each order is taken by one sender

        async def sender() -> None:
            """Publishes the next order when it is due, waits for its acknowledgement, repeats:
            `concurrency` of these keep that many orders in flight. (A task per order, gathered,
            took a third of the load generator's CPU, on the machine it measures.)"""
            for number, order in queue:
                if options.rate:
                    await asyncio.sleep(max(0.0, started + due_s(number, options.rate) - time.monotonic()))
                sent = datetime.now(UTC)
                await publisher.publish(order)
                requested_at[order.order_id] = sent
                if order.order_id in cancels:
                    await asyncio.sleep(random.random() * 0.3)  # cancel at whatever step it has reached
                    placed[order.order_id] = sent
                    requested_at[order.order_id] = datetime.now(UTC)
                    await publisher.publish(
                        CancelOrder(order_id=order.order_id, idempotency_key=f"cancel-{order.order_id}")
                    )

        await asyncio.gather(*(sender() for _ in range(max(1, min(options.concurrency, len(orders))))))
    placed = {order_id: placed.get(order_id, at) for order_id, at in requested_at.items()}

    order_ids = [o.order_id for o in orders]
    table = qualified(config.schema("order"), "orders")
    seconds, still_open = await _wait_for_terminal(
        pool, table, order_ids, cancels, options.timeout_s, started, progress
    )
    done = len(order_ids) - still_open
    trail: float | None = None
    if options.tracker_trail and not still_open:  # a saga still open never shows ended
        path_ended = time.monotonic()
        tracked = qualified(config.schema("tracker"), "sagas")
        limit = max(60.0, options.timeout_s - seconds)
        trail, _ = await _wait_for_terminal(pool, tracked, order_ids, cancels, limit, path_ended, None)
    if ended is not None:
        await ended()

    rows = await pool.fetch(
        f"SELECT order_id, status, cancel_reason, terminal_at FROM {table} WHERE order_id = ANY($1::text[])",
        order_ids,
    )
    outcomes = Counter(
        r["status"] if r["status"] != "CANCELLED" else f"CANCELLED ({r['cancel_reason']})" for r in rows
    )
    timed = [
        (requested_at[r["order_id"]], (r["terminal_at"] - requested_at[r["order_id"]]).total_seconds() * 1000)
        for r in rows
        if r["terminal_at"] is not None and r["order_id"] in requested_at
    ]
    latencies = sorted(latency for _, latency in timed)
    first = min((at for at, _ in timed), default=None)
    async with (reader or pool).acquire() as conn:
        report = await invariants.check(conn, config, order_ids)
    return DemoResult(
        run_id=run_id,
        orders=len(orders),
        outcomes=dict(sorted(outcomes.items())),
        open_sagas=len(orders) - done,
        seconds=seconds,
        sagas_per_s=done / seconds if seconds else 0.0,
        latency_ms=percentiles(latencies),
        by_second_ms=(
            by_second([((at - first).total_seconds(), ms) for at, ms in timed])
            if options.rate and first is not None
            else {}
        ),
        invariants=report,
        order_ids=order_ids,
        offered_rate=options.rate,
        placed_at=placed,
        requested_at=requested_at,
        started_at=started_at,
        tracker_trail_s=trail,
    )


PACE_TICK_S = 0.01
"""Open loop, orders are due on a 10 ms grid: those scheduled within one tick are published
together, so the producer sends them in one request instead of one request each. The load
generator shares the machine it measures; its requests cost the broker as much as the
platform's own (docs/benchmarks.md, twenty-fifth step). The rate offered is unchanged, no
order is published before its time, and a saga's latency is timed from its publication."""


def due_s(number: int, rate: float) -> float:
    """When the `number`th order (from 0) is due, in seconds after the first: its place in
    an even schedule of `rate` orders a second, rounded up to the next `PACE_TICK_S`."""
    ticks = math.ceil(round(number / rate / PACE_TICK_S, 9))  # 9 places: float noise never adds a tick
    return ticks * PACE_TICK_S


TERMINAL = ("CONFIRMED", "CANCELLED")
POLL_S = 0.25  # how often the wait looks while few sagas are open, and at the end
# ... and less often while many are, as each look costs per open saga: the wait stays behind
# the sagas' end by at most POLL_S while they end slower than 4,000/s
POLL_PER_OPEN_S = 1 / 4_000
POLL_MAX_S = 5.0


async def _wait_for_terminal(
    pool: asyncpg.Pool[Any],
    table: str,
    order_ids: list[str],
    cancels: set[str],
    timeout_s: float,
    started: float,
    progress: Progress | None,
) -> tuple[float, int]:
    """Wait until every order has ended; returns the seconds from `started` to when the
    last one was seen ended (or to the timeout), and how many are still open. Each look
    reads only the orders still open, one index lookup each, and looks less often while
    many are (it measures sagas/s: the database is not there to serve the measuring), most
    often at the end, where the time it sees is the result."""
    deadline = time.monotonic() + timeout_s
    pending = order_ids
    while True:
        pending = await _pending(pool, table, pending, cancels)
        if progress:
            progress(len(order_ids) - len(pending), len(order_ids))
        if not pending or time.monotonic() >= deadline:
            return time.monotonic() - started, len(pending)
        await asyncio.sleep(
            min(max(POLL_S, len(pending) * POLL_PER_OPEN_S), max(0.0, deadline - time.monotonic()))
        )


async def _pending(pool: asyncpg.Pool[Any], table: str, order_ids: list[str], cancels: set[str]) -> list[str]:
    """The orders of `order_ids` not yet ended. An order this run cancels has ended only
    once CANCELLED: its cancellation may arrive after it was confirmed (CONFIRMED ->
    CANCELLING -> CANCELLED), and checking the invariants in between would catch the
    refund in flight."""
    rows = await pool.fetch(
        f"SELECT o.order_id, o.status FROM unnest($1::text[]) AS k(order_id)"
        f" JOIN {table} AS o ON o.order_id = k.order_id WHERE o.status = ANY($2::text[])",
        order_ids,
        list(TERMINAL),
    )
    ended = {r["order_id"] for r in rows if r["status"] == "CANCELLED" or r["order_id"] not in cancels}
    return [order_id for order_id in order_ids if order_id not in ended]


async def measure_hops(conn: DbConnection, config: SagaConfig, result: DemoResult) -> None:
    """Fill in `result.hops_ms` from timestamps the services write anyway: the order row's
    `created_at`, the outbox's `created_at` (staged, inside the producing transaction) and
    the inbox's `processed_at` (claimed, at the start of the consuming one). The run's keys
    are joined as a set and the outbox is read through its two partial indexes — rows
    published since the run's start, and rows not yet marked published (a relay marks
    acknowledged rows a moment later, so a saga's last events may still be unmarked) — so a
    long-lived stack's history is not scanned."""
    if result.started_at is None:
        return
    placed = result.placed_at
    orders = qualified(config.schema("order"), "orders")
    rows = await conn.fetch(
        "SELECT o.order_id, o.created_at FROM unnest($1::text[]) AS k(order_id)"
        f" JOIN {orders} o USING (order_id)",
        list(placed),
    )
    hops: dict[str, list[float]] = {
        "request→order": [(r["created_at"] - placed[r["order_id"]]).total_seconds() * 1000 for r in rows]
    }
    keys = [order_id.encode() for order_id in placed]
    for producer in SERVICES:
        outbox = qualified(config.schema(producer), "outbox")
        for consumer in SERVICES:
            if consumer == producer:
                continue
            inbox = qualified(config.schema(consumer), "inbox")
            hops[f"{producer}→{consumer}"] = [
                r["ms"]
                for r in await conn.fetch(
                    "SELECT extract(epoch FROM i.processed_at - o.created_at)::float8 * 1000 AS ms"
                    f" FROM unnest($1::bytea[]) AS k(key) JOIN {outbox} o ON o.key = k.key"
                    f" JOIN {inbox} i ON i.consumer_group = $3 AND i.event_id = o.event_id"
                    " WHERE (o.published_at >= $2 OR o.published_at IS NULL)",
                    keys,
                    result.started_at,
                    config.group(consumer),
                )
            ]
    result.hops_ms = {hop: {**percentiles(sorted(ms)), "n": len(ms)} for hop, ms in hops.items() if ms}


def hops_line(hops: dict[str, dict[str, float]]) -> str:
    """`order→payment 10 / 41, ...`: where a saga's latency goes, hop by hop."""
    return ", ".join(f"{hop} {ms['p50']:.0f} / {ms['p99']:.0f}" for hop, ms in hops.items())


def by_second(samples: list[tuple[float, float]]) -> dict[str, float]:
    """(seconds into the run, latency ms) samples -> the p99 of each whole second's samples,
    as their median over the seconds (`p99_median`), the highest (`p99_worst`) and when that
    second began (`worst_at_s`); empty for no samples."""
    seconds: dict[int, list[float]] = {}
    for at, ms in samples:
        seconds.setdefault(int(at), []).append(ms)
    if not seconds:
        return {}
    p99s = {second: percentiles(sorted(values))["p99"] for second, values in seconds.items()}
    worst = max(p99s, key=lambda second: p99s[second])
    return {
        "p99_median": round(statistics.median(p99s.values()), 1),
        "p99_worst": p99s[worst],
        "worst_at_s": float(worst),
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of sorted `values`, in ms to one decimal (empty for none)."""
    if not values:
        return {}
    if len(values) == 1:
        return {"p50": round(values[0], 1), "p95": round(values[0], 1), "p99": round(values[0], 1)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 1), "p95": round(cuts[94], 1), "p99": round(cuts[98], 1)}
