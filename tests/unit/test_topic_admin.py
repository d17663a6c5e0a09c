"""How ensure_topics reads the controller's per-topic answer to CreateTopics."""

from __future__ import annotations

from typing import Any

from producers.admin import _brokers, _created, _described


def test_an_existing_topic_is_neither_created_nor_failed() -> None:
    """Our listing may be behind the controller (a topic created a moment ago by another
    tool): such a topic must go on to the drift check, not be reported as created."""
    created, failed = _created(
        [
            {"topic": "new", "error_code": 0, "error_message": None},
            {"topic": "theirs", "error_code": 36, "error_message": "Topic 'theirs' already exists."},
            {"topic": "bad", "error_code": 38, "error_message": "Replication factor: 4 larger than brokers"},
        ]
    )
    assert created == ["new"]
    assert failed == {"bad": "InvalidReplicationFactorError: Replication factor: 4 larger than brokers"}


def test_a_failure_without_message_gets_the_error_description() -> None:
    _, failed = _created([{"topic": "t", "error_code": 29, "error_message": None}])
    assert failed == {
        "t": "TopicAuthorizationFailedError: Returned by the broker when the client is not authorized"
        " to access the requested topic."
    }


class _LaggingBroker:
    """Answers DescribeTopics as a broker that learns of a new topic only on the third ask."""

    def __init__(self) -> None:
        self.asked = 0

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.asked += 1
        if self.asked == 1:
            return [{"topic": names[0], "error_code": 3, "partitions": []}]  # unknown topic
        if self.asked == 2:
            return [{"topic": names[0], "error_code": 0, "partitions": []}]
        return [{"topic": names[0], "error_code": 0, "partitions": [{"partition": 0, "replicas": [1]}]}]


async def test_a_topic_is_described_once_the_answering_broker_knows_its_partitions() -> None:
    """The drift check after a concurrent create must not read an empty description (it
    raised `min() arg is an empty sequence` on a three-broker cluster)."""
    broker = _LaggingBroker()
    description = await _described(broker, "t", timeout_s=5)  # type: ignore[arg-type]
    assert broker.asked == 3
    assert description["partitions"] == [{"partition": 0, "replicas": [1]}]


class _Cluster:
    """Answers DescribeCluster with the live brokers of each successive ask."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def describe_cluster(self) -> dict[str, Any]:
        count = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        return {"brokers": [{"node_id": n} for n in range(count)]}


async def test_a_multi_broker_cluster_missing_a_broker_is_waited_for() -> None:
    """One of three brokers away for a moment (it happened on a loaded machine): the topics
    must not be created with replication 2 meanwhile."""
    cluster = _Cluster(2, 2, 3)
    assert await _brokers(cluster, wanted=3, wait_s=10) == 3  # type: ignore[arg-type]
    assert cluster.asked == 3


async def test_a_single_broker_is_a_development_cluster_capped_at_once() -> None:
    cluster = _Cluster(1)
    assert await _brokers(cluster, wanted=3, wait_s=10) == 1  # type: ignore[arg-type]
    assert cluster.asked == 1


async def test_a_broker_still_away_after_the_wait_caps_the_replication(caplog: Any) -> None:
    cluster = _Cluster(2)
    assert await _brokers(cluster, wanted=3, wait_s=0.6) == 2  # type: ignore[arg-type]
    assert "only 2 of the 3 brokers" in caplog.text
