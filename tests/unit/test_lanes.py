"""Lanes and failure classes: pure logic, no I/O."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.errors import NotEnoughReplicasError, UnsupportedVersionError

from consumers import lanes as h
from consumers.errors import PermanentError, TransientError, classify
from consumers.lanes import Failure, Lanes, due_ms, failed_record, origin_of
from schemas.errors import NotJson


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
        (asyncpg.UniqueViolationError("dup"), "permanent"),
        (ConnectionResetError(), "transient"),
        (TimeoutError(), "transient"),
        (NotEnoughReplicasError(), "transient"),
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
    first = failed_record(
        b"k", b"v", original, origin=origin_of(original, "orders.events", 4, 1234, 1_700_000_000_000),
        group="payment", failure=_failure(TransientError("one"), t0), saga_id="o-1", lane="retry", due_ms=5,
    )  # fmt: skip
    second_origin = origin_of(first.headers, "payment.retry.1", 0, 7, 1_800_000_000_000)
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
        origin=origin_of([], "t", 0, 0, 0),
        group="g",
        failure=failure,
        saga_id=None,
        lane="dlt",
    )
    headers = dict(record.headers)
    assert len(headers[h.H_EXCEPTION_MESSAGE]) <= h.MESSAGE_LIMIT
    assert len(headers[h.H_EXCEPTION_STACKTRACE]) <= h.STACKTRACE_LIMIT
    assert record.key is None


def test_damaged_lane_headers_start_a_fresh_origin() -> None:
    forged = [(h.H_ORIGINAL_TOPIC, b"x"), (h.H_ORIGINAL_PARTITION, b"\x00")]
    origin = origin_of(forged, "orders.events", 1, 2, 3)
    assert (origin.topic, origin.partition, origin.offset, origin.attempts) == ("orders.events", 1, 2, 0)
