"""The open-loop schedule: orders due on a tick grid, never early, at the rate asked for."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sagaline.demo import PACE_TICK_S, due_s


def test_orders_within_one_tick_are_due_together() -> None:
    # 320 orders/s: one every 3.125 ms, so ticks of 10 ms hold three or four of them
    assert [due_s(n, 320) for n in range(8)] == [0.0, 0.01, 0.01, 0.01, 0.02, 0.02, 0.02, 0.03]


def test_a_slow_rate_keeps_its_own_spacing() -> None:
    assert [due_s(n, 10) for n in range(3)] == [0.0, 0.1, 0.2]


@given(
    number=st.integers(min_value=0, max_value=10_000_000), rate=st.floats(min_value=0.1, max_value=100_000)
)
def test_never_early_and_at_most_a_tick_late(number: int, rate: float) -> None:
    scheduled = number / rate
    due = due_s(number, rate)
    assert due >= scheduled - 1e-9
    assert due < scheduled + PACE_TICK_S + 1e-9
    assert math.isclose(due / PACE_TICK_S, round(due / PACE_TICK_S), abs_tol=1e-6)


@given(rate=st.floats(min_value=1, max_value=5_000), seconds=st.integers(min_value=1, max_value=60))
def test_the_offered_rate_is_kept(rate: float, seconds: int) -> None:
    # the orders due in the first `seconds` seconds are the schedule's, give or take a tick's worth
    count = sum(1 for n in range(int(rate * seconds) + 100) if due_s(n, rate) < seconds)
    assert abs(count - rate * seconds) <= rate * PACE_TICK_S + 1
