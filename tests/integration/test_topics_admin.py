"""ensure_topics: create once, idempotent on repeat, drift reported."""

from __future__ import annotations

import pytest

from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from schemas.topics import TopicSpec

pytestmark = pytest.mark.kafka


async def test_ensure_creates_then_is_idempotent_then_reports_drift(
    kafka: KafkaConnection, unique: str
) -> None:
    spec = TopicSpec(f"it.ensure.{unique}", partitions=2, configs={"retention.ms": "3600000"})
    first = await ensure_topics(kafka, [spec])
    assert (first.created, first.unchanged, first.drift) == ([spec.name], [], {})

    second = await ensure_topics(kafka, [spec])
    assert (second.created, second.unchanged, second.drift) == ([], [spec.name], {})

    wanted = TopicSpec(spec.name, partitions=4, configs={"retention.ms": "7200000"})
    drifted = await ensure_topics(kafka, [wanted])
    assert not drifted.ok
    assert drifted.drift[spec.name] == ["partitions 2 < 4", "retention.ms=3600000 (want 7200000)"]
