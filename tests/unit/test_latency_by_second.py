"""The p99 of each second of an open-loop run (`sagaline.demo.by_second`): a stall stands out
from the run's usual second, a climbing median means the load was more than the platform
keeps up with."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sagaline.demo import by_second, percentiles


def test_a_stalled_second_stands_out_from_the_median() -> None:
    samples = [(second + i / 100, 100.0 + i) for second in range(10) for i in range(100)]
    samples += [(7.5, 1500.0)] * 5  # requests of the seventh second waited through a stall
    seconds = by_second(samples)
    assert seconds["worst_at_s"] == 7.0
    assert seconds["p99_worst"] == percentiles(sorted([100.0 + i for i in range(100)] + [1500.0] * 5))["p99"]
    assert seconds["p99_worst"] > 1000
    assert seconds["p99_median"] == percentiles([100.0 + i for i in range(100)])["p99"]


def test_no_samples_no_seconds() -> None:
    assert by_second([]) == {}


@given(st.lists(st.tuples(st.floats(0, 60), st.floats(0, 10_000)), min_size=1, max_size=300))
def test_the_median_second_is_never_above_the_worst(samples: list[tuple[float, float]]) -> None:
    seconds = by_second(samples)
    assert seconds["p99_median"] <= seconds["p99_worst"]
    assert seconds["p99_worst"] <= round(max(ms for _, ms in samples), 1)
    assert int(seconds["worst_at_s"]) in {int(at) for at, _ in samples}
