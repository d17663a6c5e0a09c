"""How one deployment of the saga is named and timed. Built by the bootstrap from settings;
a prefix gives tests (or tenants) their own schemas, groups and topics."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.topics import TopicMap

SERVICES = ("order", "payment", "inventory", "tracker")


@dataclass(frozen=True)
class SagaConfig:
    topics: TopicMap = field(default_factory=TopicMap)
    prefix: str = ""
    """Prepended to schema and group names (lowercase letters, digits, underscores)."""
    payment_timeout_s: float = 30.0
    stock_timeout_s: float = 30.0
    deadline_scan_interval_s: float = 0.5
    retry_delays_s: tuple[float, ...] = (1.0, 10.0, 60.0)

    def schema(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def group(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def source(self, service: str) -> str:
        return f"/sagaline/{service}"
