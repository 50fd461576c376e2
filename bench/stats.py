"""Small, dependency-free statistics: the report must not need numpy to say what a p99 is."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as numpy's default, so numbers can be checked with any tool. Sorts a
    copy; raises ValueError on no values, since a percentile of nothing is a bug upstream.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    return percentile_sorted(ordered, q)


def percentile_sorted(ordered: Sequence[float], q: float) -> float:
    """`percentile` for values already in ascending order (large latency logs: sort once)."""
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def rate(count: float, seconds: float) -> float:
    """count per second; 0 for an empty interval rather than a division error."""
    return count / seconds if seconds > 0 else 0.0
