"""Kafka ACLs through the admin protocol (CreateAcls / DescribeAcls v1), idempotently.

aiokafka's admin client has no ACL methods, but ships the protocol's request and response
structures; `ensure_acls` sends them on the admin client's connection, all bindings of a
call in one CreateAcls request. The caller must be allowed to alter the cluster's ACLs (a
super user, or ALTER on the cluster).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DescribeAclsRequest_v1
from aiokafka.protocol.api import Request

from producers.admin import start_admin
from producers.connection import KafkaConnection


class ResourceType(IntEnum):
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    ANY = 1
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    ANY = 1
    DENY = 2
    ALLOW = 3


@dataclass(frozen=True, order=True)
class AclBinding:
    """`principal` may `operation` on the resource from any host (ALLOW, literal name)."""

    principal: str  # e.g. "User:payment"
    resource_type: ResourceType
    resource_name: str
    operation: Operation
    pattern: PatternType = PatternType.LITERAL
    permission: Permission = Permission.ALLOW
    host: str = "*"

    def __str__(self) -> str:
        pattern = "" if self.pattern is PatternType.LITERAL else f" ({self.pattern.name.lower()})"
        verb = "" if self.permission is Permission.ALLOW else f"{self.permission.name} "
        return (
            f"{self.principal} {verb}{self.operation.name} "
            f"{self.resource_type.name.lower()} {self.resource_name}{pattern}"
        )


@dataclass
class AclReport:
    """What `ensure_acls` created, what was already there, and the principals' ACLs that
    nobody asked for (drift: granted by hand, or left from an older topology)."""

    created: list[AclBinding] = field(default_factory=list)
    unchanged: list[AclBinding] = field(default_factory=list)
    unexpected: list[AclBinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unexpected


class AclsRefused(RuntimeError):
    """The broker refused to create ACLs (not authorized, no authorizer configured)."""


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 30

    def __init__(self, bindings: Sequence[AclBinding]) -> None:
        self._bindings = bindings

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(
            [
                (b.resource_type, b.resource_name, b.pattern, b.principal, b.host, b.operation, b.permission)
                for b in self._bindings
            ]
        )


class _DescribeAcls(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 29

    def __init__(self, principal: str) -> None:
        self._principal = principal

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(
            ResourceType.ANY, None, PatternType.ANY, self._principal, None, Operation.ANY, Permission.ANY
        )


async def describe_acls(kafka: KafkaConnection, principals: Iterable[str]) -> list[AclBinding]:
    """Every ACL the cluster holds for `principals`."""
    admin = await start_admin(kafka)
    try:
        found: list[AclBinding] = []
        for principal in principals:
            response = (await admin._send_request(_DescribeAcls(principal))).to_object()
            _raise_for(response["error_code"], response.get("error_message"), "describe ACLs")
            found.extend(_bindings(response["resources"]))
        return found
    finally:
        await admin.close()


async def ensure_acls(
    kafka: KafkaConnection,
    wanted: Sequence[AclBinding],
    *,
    create: bool = True,
    owned: Callable[[AclBinding], bool] = lambda _: True,
    timeout_s: float = 30.0,
) -> AclReport:
    """Create the missing bindings of `wanted` (nothing if `create` is false: a dry run), and
    report every other ACL of the same principals on resources the deployment `owned` as
    unexpected (another deployment's ACLs on the same cluster are not drift). Idempotent."""
    principals = sorted({b.principal for b in wanted})
    existing = {b for b in await describe_acls(kafka, principals) if owned(b)}
    report = AclReport(
        unchanged=sorted(b for b in wanted if b in existing),
        unexpected=sorted(existing - set(wanted)),
    )
    missing = sorted(set(wanted) - existing)
    if missing and create:
        admin = await start_admin(kafka)
        try:
            response = (await admin._send_request(_CreateAcls(missing))).to_object()
        finally:
            await admin.close()
        errors = [
            f"{binding}: {_error(r['error_code'], r.get('error_message'))}"
            for binding, r in zip(missing, response["creation_responses"], strict=True)
            if r["error_code"] != 0
        ]
        if errors:
            raise AclsRefused("cannot create ACLs: " + "; ".join(errors[:3]))
        await _wait_until_visible(kafka, principals, set(missing), timeout_s)
    report.created = missing
    return report


async def _wait_until_visible(
    kafka: KafkaConnection, principals: list[str], created: set[AclBinding], timeout_s: float
) -> None:
    """The controller accepts ACLs before every broker's authorizer has them (they travel
    in the metadata log): wait until they are described, so that a service started next is
    not denied, and a second run finds them."""
    deadline = time.monotonic() + timeout_s
    while not created <= set(await describe_acls(kafka, principals)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"created ACLs not visible after {timeout_s:.0f}s")
        await asyncio.sleep(0.2)


def _bindings(resources: list[dict[str, Any]]) -> list[AclBinding]:
    return [
        AclBinding(
            principal=acl["principal"],
            resource_type=ResourceType(resource["resource_type"]),
            resource_name=resource["resource_name"],
            operation=Operation(acl["operation"]),
            pattern=PatternType(resource["resource_pattern_type"]),
            permission=Permission(acl["permission_type"]),
            host=acl["host"],
        )
        for resource in resources
        for acl in resource["acls"]
    ]


def _error(code: int, message: str | None) -> str:
    error = for_code(code)
    return f"{error.__name__}: {message or error.description}"


def _raise_for(code: int, message: str | None, what: str) -> None:
    if code != 0:
        raise AclsRefused(f"cannot {what}: {_error(code, message)}")
