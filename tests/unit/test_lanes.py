"""Lanes and failure classes: pure logic, no I/O."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaTimeoutError,
    NotEnoughReplicasError,
    UnknownMemberIdError,
    UnsupportedVersionError,
)

from consumers import lanes as h
from consumers.errors import PermanentError, TransientError, classify
from consumers.lanes import Failure, LaneHeaderError, Lanes, due_ms, failed_record, origin_of
from schemas.errors import NotJson

PAYMENT = Lanes("payment", (1.0, 10.0, 60.0))


def test_lane_names_belong_to_the_group() -> None:
    lanes = Lanes("payment", (1.0, 10.0, 60.0))
    assert lanes.retry_topics == ["payment.retry.1", "payment.retry.2", "payment.retry.3"]
    assert lanes.dlt == "payment.dlt"
    assert lanes.retry_index("payment.retry.2") == 2
    assert lanes.retry_index("inventory.retry.2") is None
    assert lanes.retry_index("payment.retry.9") is None
    assert lanes.delay_of("payment.retry.3") == 60.0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransientError("gateway down"), "transient"),
        (PermanentError("unusable"), "permanent"),
        (NotJson("x"), "permanent"),
        (asyncpg.SerializationError("could not serialize"), "transient"),
        (asyncpg.DeadlockDetectedError("deadlock"), "transient"),
        (
            asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
            "transient",
        ),
        (asyncpg.IdleInTransactionSessionTimeoutError("idle in transaction too long"), "transient"),
        (asyncpg.InvalidTransactionStateError("a bug: no transaction"), "permanent"),
        (asyncpg.UniqueViolationError("dup"), "permanent"),
        (ConnectionResetError(), "transient"),
        (TimeoutError(), "transient"),
        (NotEnoughReplicasError(), "transient"),
        (CommitFailedError("fenced: the group rebalanced"), "transient"),
        (IllegalStateError("no longer assigned"), "transient"),
        (KafkaTimeoutError(), "transient"),
        (UnknownMemberIdError(), "transient"),
        (UnsupportedVersionError(), "permanent"),
        (KeyError("bug"), "permanent"),
    ],
)
def test_failures_are_classified_by_type(exc: BaseException, expected: str) -> None:
    assert classify(exc) == expected


def _failure(exc: BaseException, at: datetime) -> Failure:
    return Failure(exc=exc, failure_class=classify(exc), at=at)


def test_headers_keep_the_first_origin_replace_the_last_failure_and_never_grow() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    original = [("ce_id", b"e-1"), ("content-type", b"application/json")]
    origin = origin_of(original, "orders.events", 4, 1234, 1_700_000_000_000, PAYMENT)
    first = failed_record(
        b"k", b"v", original, origin=origin,
        group="payment", failure=_failure(TransientError("one"), t0), saga_id="o-1", lane="retry", due_ms=5,
    )  # fmt: skip
    second_origin = origin_of(first.headers, "payment.retry.1", 0, 7, 1_800_000_000_000, PAYMENT)
    second = failed_record(
        b"k", b"v", first.headers, origin=second_origin, group="payment",
        failure=_failure(ValueError("two"), t0 + timedelta(seconds=3)), saga_id="o-1", lane="dlt",
    )  # fmt: skip
    headers = dict(second.headers)
    assert len(second.headers) == len(headers)  # no duplicate names
    assert headers[h.H_ORIGINAL_TOPIC] == b"orders.events"
    assert struct.unpack(">i", headers[h.H_ORIGINAL_PARTITION]) == (4,)
    assert struct.unpack(">q", headers[h.H_ORIGINAL_OFFSET]) == (1234,)
    assert struct.unpack(">q", headers[h.H_ORIGINAL_TIMESTAMP]) == (1_700_000_000_000,)
    assert headers[h.H_EXCEPTION_FQCN] == b"builtins.ValueError"
    assert headers[h.H_EXCEPTION_MESSAGE] == b"two"
    assert headers[h.H_ATTEMPTS] == b"2"
    assert headers[h.H_FIRST_FAILURE] == t0.isoformat().encode()
    assert headers[h.H_LAST_FAILURE] == (t0 + timedelta(seconds=3)).isoformat().encode()
    assert headers[h.H_LANE] == b"dlt"
    assert h.H_DUE not in headers
    assert headers["ce_id"] == b"e-1"
    assert due_ms(first.headers) == 5


def test_a_huge_stack_trace_is_truncated_to_its_bound() -> None:
    failure = _failure(ValueError("x" * 50_000), datetime.now(UTC))
    record = failed_record(
        None,
        None,
        [],
        origin=origin_of([], "t", 0, 0, 0, PAYMENT),
        group="g",
        failure=failure,
        saga_id=None,
        lane="dlt",
    )
    headers = dict(record.headers)
    assert len(headers[h.H_EXCEPTION_MESSAGE]) <= h.MESSAGE_LIMIT
    assert len(headers[h.H_EXCEPTION_STACKTRACE]) <= h.STACKTRACE_LIMIT
    assert record.key is None


def _lane_headers(**overrides: bytes | None) -> list[tuple[str, bytes | None]]:
    headers: dict[str, bytes | None] = {
        h.H_ORIGINAL_TOPIC: b"orders.events",
        h.H_ORIGINAL_PARTITION: struct.pack(">i", 1),
        h.H_ORIGINAL_OFFSET: struct.pack(">q", 2),
        h.H_ORIGINAL_TIMESTAMP: struct.pack(">q", 1_700_000_000_000),
        h.H_ATTEMPTS: b"1",
        h.H_FIRST_FAILURE: b"2026-01-01T00:00:00+00:00",
    }
    headers.update(overrides)
    return list(headers.items())


def test_lane_headers_on_an_input_topic_are_not_ours_and_are_ignored() -> None:
    forged = _lane_headers(**{h.H_ORIGINAL_TOPIC: None, h.H_ORIGINAL_TIMESTAMP: struct.pack(">q", 2**62)})
    origin = origin_of(forged, "orders.events", 1, 2, 3, PAYMENT)
    assert (origin.topic, origin.partition, origin.offset, origin.attempts) == ("orders.events", 1, 2, 0)


def test_intact_lane_headers_on_a_retry_lane_give_the_origin() -> None:
    origin = origin_of(_lane_headers(**{h.H_REPLAY_OF: b"42"}), "payment.retry.2", 0, 9, 5, PAYMENT)
    assert (origin.topic, origin.partition, origin.offset, origin.attempts, origin.replay_of) == (
        "orders.events", 1, 2, 1, 42,
    )  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [
        {h.H_ORIGINAL_TOPIC: None},  # null value (kcat -H name)
        {h.H_ORIGINAL_TOPIC: b"\xff\xfe"},
        {h.H_ORIGINAL_TOPIC: b"a" * 300},
        {h.H_ORIGINAL_PARTITION: b"\x00"},
        {h.H_ORIGINAL_PARTITION: struct.pack(">i", -1)},
        {h.H_ORIGINAL_OFFSET: struct.pack(">q", -5)},
        {h.H_ORIGINAL_TIMESTAMP: struct.pack(">q", 2**62)},  # far beyond year 9999
        {h.H_ATTEMPTS: "²".encode()},
        {h.H_ATTEMPTS: b"9" * 5000},
        {h.H_FIRST_FAILURE: b"yesterday"},
        {h.H_FIRST_FAILURE: b"9999-12-31T23:59:59-23:00"},  # overflows when moved to UTC
        {h.H_FIRST_FAILURE: b"2026-01-01T00:00:00"},  # no offset
        {h.H_REPLAY_OF: "²".encode() * 5000},
        {h.H_ORIGINAL_TIMESTAMP_TYPE: b"SOON"},
    ],
)
def test_unusable_lane_headers_on_a_retry_lane_are_refused(overrides: dict[str, bytes | None]) -> None:
    with pytest.raises(LaneHeaderError):
        origin_of(_lane_headers(**overrides), "payment.retry.1", 0, 0, 0, PAYMENT)


def test_a_repeated_or_missing_lane_header_is_refused() -> None:
    headers = _lane_headers()
    with pytest.raises(LaneHeaderError, match="more than once"):
        origin_of([*headers, headers[0]], "payment.retry.1", 0, 0, 0, PAYMENT)
    with pytest.raises(LaneHeaderError, match="missing"):
        origin_of(headers[1:], "payment.retry.1", 0, 0, 0, PAYMENT)


@pytest.mark.parametrize("raw", [None, b"", b"soon", "²".encode(), b"9" * 5000, b"\xff"])
def test_an_unusable_due_time_means_due_now(raw: bytes | None) -> None:
    assert due_ms([(h.H_DUE, raw)]) is None


def test_a_producers_replay_link_is_not_carried_into_a_dead_letter() -> None:
    forged = [("ce_id", b"e"), (h.H_REPLAY_OF, b"7"), (h.H_CORRECTS, b"x")]
    record = failed_record(
        None, b"v", forged, origin=origin_of(forged, "orders.events", 0, 0, 0, PAYMENT), group="payment",
        failure=_failure(ValueError("x"), datetime.now(UTC)), saga_id=None, lane="dlt",
    )  # fmt: skip
    names = [name for name, _ in record.headers]
    assert h.H_REPLAY_OF not in names
    assert h.H_CORRECTS not in names
