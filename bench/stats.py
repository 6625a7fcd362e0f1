"""Summaries of repeated measurements: median with min and max, percentiles, ratios."""

from __future__ import annotations

import math
import statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict:
    """{median, min, max, n, values} of repeated runs of one figure."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "values": list(values)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def rotated(items: list, turn: int) -> list:
    """`items` starting at position `turn` (so no item is always measured first)."""
    k = turn % len(items) if items else 0
    return items[k:] + items[:k]
