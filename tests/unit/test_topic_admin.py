"""How ensure_topics reads the controller's per-topic answer to CreateTopics."""

from __future__ import annotations

from producers.admin import _created


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
