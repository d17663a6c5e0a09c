"""Topic specifications: name, partitions, replication and topic-level configs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TopicSpec:
    """What a topic must look like. `replication=None` takes the cluster's default (capped
    to the broker count by `ensure_topics`)."""

    name: str
    partitions: int = 3
    replication: int | None = None
    configs: dict[str, str] = field(default_factory=dict)
