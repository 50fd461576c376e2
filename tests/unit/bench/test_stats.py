"""Percentiles as numpy's default defines them, so any tool can check a reported p99."""

from __future__ import annotations

import pytest

from bench.stats import median, percentile, percentile_sorted, rate, ratio


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 1.0, 4.0, 7.0]  # sorted: 1 4 7 10
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert median([3.0]) == 3.0


def test_percentile_leaves_its_input_alone() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


def test_percentile_sorted_matches_percentile() -> None:
    values = [float(v * 7 % 13) for v in range(50)]
    for q in (1, 25, 50, 75, 99):
        assert percentile_sorted(sorted(values), q) == percentile(values, q)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0], q)


def test_percentile_of_nothing() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_ratio_and_rate_say_nothing_rather_than_divide_by_zero() -> None:
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None
    assert ratio(3.0, 0.0) is None
    assert rate(10, 2.0) == 5.0
    assert rate(10, 0.0) == 0.0
