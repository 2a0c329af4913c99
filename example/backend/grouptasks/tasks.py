"""Seed 002's task: the sum of two integers, after a random delay to stand for real work."""

from __future__ import annotations

import os
import random
import time

from . import app


def delay_range() -> tuple[float, float]:
    """``GROUPTASKS_DELAY="min,max"`` in seconds (default ``3,10``, as in the seed)."""
    low, _, high = os.environ.get("GROUPTASKS_DELAY", "3,10").partition(",")
    return float(low), float(high or low)


@app.task(name="grouptasks.add")
def add(paramA: int, paramB: int) -> int:
    low, high = delay_range()
    time.sleep(random.uniform(low, high))
    return int(paramA) + int(paramB)
