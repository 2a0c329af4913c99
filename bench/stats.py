"""Small statistics the new measurements share: percentiles with linear interpolation."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolated as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], digits: int = 2) -> dict[str, float | None]:
    """p50, p90, p99, max, min and mean of ``values``, rounded."""
    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)
    return {"p50": r(percentile(values, 50)), "p90": r(percentile(values, 90)),
            "p99": r(percentile(values, 99)), "max": r(max(values) if values else None),
            "min": r(min(values) if values else None),
            "mean": r(sum(values) / len(values) if values else None)}
