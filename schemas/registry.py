"""Which message class a CloudEvents `type` names, and how older versions are upcast.

A record of version v < current is lifted one version at a time by registered upcasters
(pure `dict -> dict` functions). A version newer than ours, or an old one with no upcaster
path, is `UnsupportedVersion`: permanent, so it dead-letters instead of crashing a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import UnknownMessageType, UnsupportedVersion
from schemas.messages import ALL_MESSAGES, Message

TYPE_PREFIX = "io.sagaline."

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def ce_type(cls: type[Message]) -> str:
    """The CloudEvents `type` of a message class, e.g. `io.sagaline.OrderPlaced`."""
    return TYPE_PREFIX + cls.__name__


@dataclass
class MessageRegistry:
    by_type: dict[str, type[Message]] = field(default_factory=dict)
    upcasters: dict[tuple[str, int], Upcaster] = field(default_factory=dict)

    @classmethod
    def of(cls, messages: Iterable[type[Message]]) -> MessageRegistry:
        registry = cls()
        for message in messages:
            registry.register(message)
        return registry

    def register(self, message: type[Message]) -> None:
        self.by_type[ce_type(message)] = message

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register the function lifting `type_name` from `from_version` to +1."""

        def register(fn: Upcaster) -> Upcaster:
            self.upcasters[(type_name, from_version)] = fn
            return fn

        return register

    def resolve(self, type_attr: str) -> type[Message]:
        try:
            return self.by_type[type_attr]
        except KeyError:
            raise UnknownMessageType(f"unknown message type {type_attr!r}") from None

    def upcast(self, cls: type[Message], version: int, data: dict[str, Any]) -> dict[str, Any]:
        current = cls.schema_version
        if version > current:
            raise UnsupportedVersion(
                f"{cls.__name__} version {version} is newer than this service understands ({current})"
            )
        while version < current:
            step = self.upcasters.get((cls.__name__, version))
            if step is None:
                raise UnsupportedVersion(f"{cls.__name__} version {version} has no upcaster to {version + 1}")
            data = step(data)
            version += 1
        return data


DEFAULT_REGISTRY = MessageRegistry.of(ALL_MESSAGES)
