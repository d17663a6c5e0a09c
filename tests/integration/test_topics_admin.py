"""ensure_topics: create once, idempotent on repeat, drift reported."""

from __future__ import annotations

import pytest

from producers.admin import TopicsRefused, ensure_topics
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


async def test_a_topic_the_controller_refuses_is_an_error_naming_it(
    kafka: KafkaConnection, unique: str
) -> None:
    """Kafka answers CreateTopics per topic instead of failing the call: a refusal must not
    pass for "created"."""
    bad = TopicSpec(f"it.refused.{unique}", configs={"cleanup.policy": "shred"})
    good = TopicSpec(f"it.accepted.{unique}")
    with pytest.raises(TopicsRefused) as refused:
        await ensure_topics(kafka, [good, bad])
    assert list(refused.value.errors) == [bad.name]
    assert "InvalidConfigurationError" in str(refused.value)
