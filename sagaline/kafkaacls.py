"""Least privilege in Kafka: one principal per service, one for the DLQ tooling, one for
upstream publishers, and the ACLs each needs — generated from the topic map, the services'
subscriptions and their lanes, in this one place (`sagaline acls ensure`).

- `order`, `payment`, `inventory`: write its events topic, its retry lanes and dead-letter
  topic; read what it subscribes to and its retry lanes; its own consumer group.
- `tracker`: the same without an events topic (it reads the ingress and every events topic).
- `dlq`: read every group's dead-letter topic, write every group's first retry lane (where a
  replay goes); the DLQ indexer's group.
- `upstream`: write the ingress topic.
- `admin`: a super user, for the admin steps only (topics, ACLs).

READ and WRITE imply DESCRIBE; no principal may create, delete or alter a topic, nor read
or write anything else, and the broker denies what no ACL allows.
"""

from __future__ import annotations

from collections.abc import Callable

from producers.acls import AclBinding, Operation, ResourceType
from sagas.config import SERVICES, SagaConfig
from sagas.services import SPECS
from schemas.topics import INGRESS, INVENTORY, ORDERS, PAYMENTS

UPSTREAM = "upstream"
DLQ = "dlq"
ADMIN = "admin"
PRINCIPALS = (*SERVICES, DLQ, UPSTREAM)
"""The SCRAM users of a deployment besides `admin` (and the broker's own)."""
EVENTS = {"order": ORDERS, "payment": PAYMENTS, "inventory": INVENTORY}
"""The topic each service's outbox publishes to (the tracker publishes nothing)."""


def principal(who: str) -> str:
    return f"User:{who}"


def dlq_group(config: SagaConfig) -> str:
    return f"{config.prefix}sagaline-dlq-index"


def owned(config: SagaConfig) -> Callable[[AclBinding], bool]:
    """Whether an ACL is about this deployment's resources (its topic or group prefix), so
    that deployments sharing a cluster and its users do not see each other's ACLs as drift."""

    def test(binding: AclBinding) -> bool:
        if binding.resource_type is ResourceType.TOPIC:
            return binding.resource_name.startswith(config.topics.prefix)
        if binding.resource_type is ResourceType.GROUP:
            return binding.resource_name.startswith(config.prefix)
        return True

    return test


def bindings(config: SagaConfig) -> list[AclBinding]:
    """Every ACL the deployment's principals need, and nothing more."""
    topics = config.topics
    wanted: list[AclBinding] = []

    def allow(who: str, operation: Operation, kind: ResourceType, name: str) -> None:
        wanted.append(AclBinding(principal(who), kind, name, operation))

    for service in SERVICES:
        lanes = config.lanes(service)
        if service in EVENTS:
            allow(service, Operation.WRITE, ResourceType.TOPIC, topics.name(EVENTS[service]))
        for topic in SPECS[service](config).subscribe:
            allow(service, Operation.READ, ResourceType.TOPIC, topic)
        for lane in lanes.retry_topics:
            allow(service, Operation.READ, ResourceType.TOPIC, lane)
            allow(service, Operation.WRITE, ResourceType.TOPIC, lane)
        allow(service, Operation.WRITE, ResourceType.TOPIC, lanes.dlt)
        allow(service, Operation.READ, ResourceType.GROUP, config.group(service))
        allow(DLQ, Operation.READ, ResourceType.TOPIC, lanes.dlt)
        allow(DLQ, Operation.WRITE, ResourceType.TOPIC, lanes.retry_topic(1))
    allow(DLQ, Operation.READ, ResourceType.GROUP, dlq_group(config))
    allow(UPSTREAM, Operation.WRITE, ResourceType.TOPIC, topics.name(INGRESS))
    return sorted(set(wanted))
