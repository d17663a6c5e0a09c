"""Creating and checking topics through Kafka's admin API, idempotently."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code

from producers.connection import KafkaConnection, unreachable
from schemas.topics import TopicSpec

log = logging.getLogger(__name__)

BROKER_WAIT_S = 15.0  # how long topic creation waits for a multi-broker cluster's missing brokers


@dataclass
class TopicReport:
    """What `ensure_topics` did per topic, and how existing topics drift from their spec."""

    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.drift


async def start_admin(kafka: KafkaConnection) -> AIOKafkaAdminClient:
    """A started admin client; `Unreachable` (naming the bootstrap servers) if Kafka is not."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        await admin.close()
        raise await unreachable(kafka, exc) from None
    return admin


async def delete_topics(admin: AIOKafkaAdminClient, names: Sequence[str], timeout_s: float = 30.0) -> None:
    """Delete topics and return once the cluster's metadata no longer lists them. The
    controller acknowledges a deletion before every broker has applied it, so a listing made
    right after `DeleteTopics` can still show the topics for a moment."""
    if not names:
        return
    await admin.delete_topics(list(names))
    deadline = time.monotonic() + timeout_s
    while True:
        left = sorted(set(names) & set(await admin.list_topics()))
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics still listed {timeout_s:.0f}s after their deletion: {left}")
        await asyncio.sleep(0.1)


def durability(replication: int) -> dict[str, str]:
    """Topic configs every sagaline topic gets for its effective replication factor: never
    elect an out-of-sync replica (it would lose acknowledged records), and with three or
    more replicas an `acks=all` write needs two of them, so one broker may fail without
    losing a write or stopping them."""
    configs = {"unclean.leader.election.enable": "false"}
    if replication >= 3:
        configs["min.insync.replicas"] = "2"
    return configs


async def ensure_topics(
    kafka: KafkaConnection, specs: Sequence[TopicSpec], timeout_s: float = 30.0
) -> TopicReport:
    """Create missing topics, wait until every partition has a leader, report drift."""
    report = TopicReport()
    admin = await start_admin(kafka)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        wanted = max((s.replication or 3 for s in missing), default=1)
        brokers = await _brokers(admin, wanted, BROKER_WAIT_S if missing else 0.0)
        if missing:
            new = [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=min(s.replication or 3, brokers),
                    topic_configs={**durability(min(s.replication or 3, brokers)), **s.configs},
                )
                for s in missing
            ]
            response = await admin.create_topics(new)
            report.created, failed = _created(response.to_object()["topic_errors"])
            if failed:
                raise TopicsRefused(failed)
        await _wait_for_leaders(admin, [s.name for s in specs], timeout_s)
        for spec in specs:
            if spec.name in report.created:
                continue
            problems = await _drift(admin, spec, brokers)
            if problems:
                report.drift[spec.name] = problems
            else:
                report.unchanged.append(spec.name)
    finally:
        await admin.close()
    return report


async def _brokers(admin: AIOKafkaAdminClient, wanted: int, wait_s: float) -> int:
    """How many brokers the cluster has, to cap a replication factor at. A cluster answers
    with its live brokers only: on a multi-broker cluster with one away (restarting, paused,
    just starting) wait up to `wait_s` for `wanted` of them rather than quietly create
    topics with fewer replicas than asked for; a single broker is a development cluster,
    where capping at one is the intent."""
    deadline = time.monotonic() + wait_s
    while True:
        brokers = len((await admin.describe_cluster())["brokers"])
        if brokers >= wanted or brokers <= 1 or time.monotonic() >= deadline:
            if 1 < brokers < wanted:
                log.warning(
                    "only %d of the %d brokers asked for answer after %.0fs: new topics get replication %d",
                    brokers,
                    wanted,
                    wait_s,
                    brokers,
                )
            return brokers
        await asyncio.sleep(0.5)


class TopicsRefused(RuntimeError):
    """The controller refused to create topics (invalid replication, policy, authorization)."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__(
            "cannot create " + "; ".join(f"{name}: {why}" for name, why in sorted(errors.items()))
        )


def _created(results: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Split a CreateTopics response's per-topic results into the topics this call created
    and those it could not. Kafka answers per topic, not with an exception: a topic that
    already exists (another process created it after our listing, or our metadata was behind
    the controller's) is neither, and is checked for drift like any existing topic."""
    created: list[str] = []
    failed: dict[str, str] = {}
    for result in results:
        code = result["error_code"]
        if code == 0:
            created.append(result["topic"])
        elif code != TopicAlreadyExistsError.errno:
            error = for_code(code)
            failed[result["topic"]] = f"{error.__name__}: {result.get('error_message') or error.description}"
    return created, failed


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        pending = [
            d["topic"]
            for d in described
            if d["error_code"] != 0 or not d["partitions"] or any(p["leader"] < 0 for p in d["partitions"])
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without partition leaders after {timeout_s:.0f}s: {pending}")
        await asyncio.sleep(0.2)


async def _drift(admin: AIOKafkaAdminClient, spec: TopicSpec, brokers: int) -> list[str]:
    description = await _described(admin, spec.name)
    problems: list[str] = []
    partitions = description["partitions"]
    if len(partitions) < spec.partitions:
        problems.append(f"partitions {len(partitions)} < {spec.partitions}")
    want_rf = min(spec.replication or 3, brokers)
    have_rf = min(len(p["replicas"]) for p in partitions)
    if have_rf < want_rf:
        problems.append(f"replication {have_rf} < {want_rf}")
    wanted = {**durability(want_rf), **spec.configs}
    if wanted:
        actual = await topic_configs(admin, spec.name, list(wanted))
        for key, value in wanted.items():
            if actual.get(key) != value:
                problems.append(f"{key}={actual.get(key)} (want {value})")
    return problems


async def _described(admin: AIOKafkaAdminClient, name: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The topic's description once the answering broker knows its partitions. Each request
    may go to another broker, and one that has not yet learnt of a topic created a moment
    ago (by us or another tool) describes it without partitions: ask again."""
    deadline = time.monotonic() + timeout_s
    while True:
        [description] = await admin.describe_topics([name])
        if description["error_code"] == 0 and description["partitions"]:
            return dict(description)
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} has no partitions in the metadata after {timeout_s:.0f}s")
        await asyncio.sleep(0.2)


async def topic_configs(
    admin: AIOKafkaAdminClient, topic: str, names: list[str], timeout_s: float = 10.0
) -> dict[str, str]:
    """Effective values of the named topic configs (explicit or inherited from the broker).
    A broker that has not yet learnt of a new topic answers with an error: ask again."""
    deadline = time.monotonic() + timeout_s
    while True:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(names))]
        )
        [resource] = response.to_object()["resources"]
        if resource["error_code"] == 0:
            return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"describe configs of {topic}: error {resource['error_code']} {resource['error_message']}"
            )
        await asyncio.sleep(0.25)
