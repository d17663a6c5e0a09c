"""The chaos checker: judges a run from PostgreSQL and the topics, independently of the
services' own bookkeeping (the tracker, the invariant report the demo prints).

I1 every saga terminal, with the outcome its workload implies (never by its deadline)
I2 money: per customer, initial - balance = charged - refunded; in total, charged -
   refunded = the totals of the confirmed orders
I3 stock: per SKU, initial - available = units held by `reserved` reservations; never < 0
I4 no duplicate side effect: one event id per (order, effect) on the topics; a charge is
   the order's total or nothing
I5 no lost event: every outbox row published and on its topic; every group's lag is zero
I6 no illegal transition: each order's own events, in topic order, follow its state machine
I7 the dead-letter topics hold exactly the injected poison
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from producers.connection import KafkaConnection
from sagas.config import SERVICES, SagaConfig
from sagas.services import SPECS
from schemas.codec import decode
from schemas.errors import DecodeError
from tests.reliability.chaos.workload import Workload
from tests.support import read_all

INVARIANTS = ("I1", "I2", "I3", "I4", "I5", "I6", "I7")
EFFECTS = {
    "OrderPlaced", "OrderConfirmed", "OrderCancelled", "PaymentCompleted", "PaymentFailed",
    "PaymentRefunded", "StockReserved", "StockRejected", "StockReleased",
}  # fmt: skip
# The order service's own events for one order, in the order it emits them (a regular
# language: placed, then confirmed and/or cancelling, then cancelled; or cancelled alone
# when the cancellation came first; or rejected).
_LEGAL_ORDER_PATHS = {
    ("OrderPlaced",),
    ("OrderPlaced", "OrderConfirmed"),
    ("OrderPlaced", "OrderCancelled"),
    ("OrderPlaced", "OrderCancelling"),
    ("OrderPlaced", "OrderCancelling", "OrderCancelled"),
    ("OrderPlaced", "OrderConfirmed", "OrderCancelling"),
    ("OrderPlaced", "OrderConfirmed", "OrderCancelling", "OrderCancelled"),
    ("OrderCancelled",),
}


@dataclass
class Verdict:
    violations: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name in INVARIANTS})
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(found) for name, found in self.violations.items()}

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self, limit: int = 5) -> str:
        return "; ".join(f"{n}: {found[:limit]}" for n, found in self.violations.items() if found)


async def check(
    pool: asyncpg.Pool[Any],
    kafka: KafkaConnection,
    config: SagaConfig,
    workload: Workload,
    poison: set[tuple[str, bytes | None]] | None = None,
) -> Verdict:
    """`poison`: the (group, record key) pairs injected to be dead-lettered."""
    verdict = Verdict()
    v = verdict.violations
    s = {name: f'"{config.schema(name)}"' for name in SERVICES}
    planned = workload.by_id

    rows = {
        r["order_id"]: r
        for r in await pool.fetch(
            f"SELECT order_id, status, cancel_reason, total_minor FROM {s['order']}.orders"
        )
    }
    for order_id, plan in planned.items():
        row = rows.get(order_id)
        problem = plan.problem(row["status"] if row else None, row["cancel_reason"] if row else None)
        if problem:
            v["I1"].append(problem)
    verdict.figures["outcomes"] = dict(
        Counter(f"{r['status']} ({r['cancel_reason']})" for r in rows.values())
    )

    payments = await pool.fetch(
        f"SELECT order_id, customer_id, status, charged_minor, refunded_minor FROM {s['payment']}.payments"
    )
    balances = {
        r["customer_id"]: r["balance_minor"]
        for r in await pool.fetch(f"SELECT customer_id, balance_minor FROM {s['payment']}.accounts")
    }
    net: dict[str, int] = defaultdict(int)
    for p in payments:
        net[p["customer_id"]] += p["charged_minor"] - p["refunded_minor"]
    for customer, initial in workload.accounts.items():
        spent = initial - balances.get(customer, initial)
        if spent != net.get(customer, 0):
            v["I2"].append(
                f"{customer}: balance fell by {spent} but charged - refunded is {net.get(customer, 0)}"
            )
    confirmed = sum(r["total_minor"] for r in rows.values() if r["status"] == "CONFIRMED")
    if sum(net.values()) != confirmed:
        v["I2"].append(f"charged - refunded {sum(net.values())} != confirmed totals {confirmed}")
    verdict.figures["confirmed_minor"] = confirmed

    stock = {
        r["sku"]: r for r in await pool.fetch(f"SELECT sku, initial, available FROM {s['inventory']}.stock")
    }
    held: dict[str, int] = defaultdict(int)
    for r in await pool.fetch(f"SELECT lines FROM {s['inventory']}.reservations WHERE status = 'reserved'"):
        for line in json.loads(r["lines"]):
            held[line["sku"]] += line["quantity"]
    for sku in workload.stock:
        row = stock.get(sku)
        if row is None or row["available"] < 0 or row["initial"] - row["available"] != held[sku]:
            v["I3"].append(f"{sku}: {dict(row) if row else None}, reserved rows hold {held[sku]}")

    for p in payments:
        total = rows[p["order_id"]]["total_minor"] if p["order_id"] in rows else None
        if p["charged_minor"] not in (0, total):
            v["I4"].append(f"{p['order_id']}: charged {p['charged_minor']} of {total}")

    event_topics = {"orders": config.topics.orders, "payments": config.topics.payments}
    event_topics["inventory"] = config.topics.inventory
    topics = {
        name: await read_all(kafka, topic, at_least=0, timeout_s=30) for name, topic in event_topics.items()
    }
    on_topics: set[str] = set()
    effects: dict[tuple[str, str], set[str]] = defaultdict(set)
    paths: dict[str, list[str]] = defaultdict(list)
    for name, records in topics.items():
        for record in records:
            try:
                envelope = decode(record.value, record.headers)
            except DecodeError:
                continue
            if envelope.id in on_topics:
                continue  # the same event again (a relay re-sent it): consumers drop it
            on_topics.add(envelope.id)
            kind, order_id = type(envelope.data).__name__, envelope.data.order_id
            if kind in EFFECTS:
                effects[(order_id, kind)].add(envelope.id)
            if name == "orders" and kind != "OrderRejected":
                paths[order_id].append(kind)
    for (order_id, kind), ids in effects.items():
        if len(ids) > 1:
            v["I4"].append(f"{order_id}: {len(ids)} distinct {kind} events")
    for order_id, path in paths.items():
        if tuple(path) not in _LEGAL_ORDER_PATHS:
            v["I6"].append(f"{order_id}: {' -> '.join(path)}")

    for service in SERVICES:
        for r in await pool.fetch(f"SELECT event_id, topic, published_at FROM {s[service]}.outbox"):
            if r["published_at"] is None:
                v["I5"].append(f"{service} outbox: {r['event_id']} never published")
            elif (
                r["topic"] != ""
                and r["event_id"] not in on_topics
                and r["topic"] in (config.topics.orders, config.topics.payments, config.topics.inventory)
            ):
                v["I5"].append(f"{service} outbox: {r['event_id']} marked published, not on {r['topic']}")
    v["I5"].extend(await _lag(kafka, config))

    dead: Counter[tuple[str, bytes | None]] = Counter()
    for service in SERVICES:
        for record in await read_all(kafka, config.lanes(service).dlt, at_least=0, timeout_s=30):
            dead[(config.group(service), record.key)] += 1
    expected = set(poison or ())
    for found in set(dead) - expected:
        v["I7"].append(f"unexpected dead letter {found}")
    for missing in expected - set(dead):
        v["I7"].append(f"poison {missing} not dead-lettered")
    verdict.figures["dead_letters"] = sum(dead.values())
    return verdict


async def _lag(kafka: KafkaConnection, config: SagaConfig) -> list[str]:
    """Every group has committed everything on its topics and retry lanes (Kafka's admin API)."""
    problems: list[str] = []
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        for service in SERVICES:
            group = config.group(service)
            topics = [*SPECS[service](config).subscribe, *config.lanes(service).retry_topics]
            partitions = [
                TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])
            ]
            ends = await consumer.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            for tp in partitions:
                done = committed[tp].offset if tp in committed and committed[tp] is not None else 0
                if ends[tp] > max(done, 0):
                    problems.append(f"{group} lags {ends[tp] - max(done, 0)} on {tp.topic}[{tp.partition}]")
    finally:
        await consumer.stop()
        await admin.close()
    return problems
