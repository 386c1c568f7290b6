"""Accuracy / Pass@1 with a 95% Wilson score interval. Pure functions, stdlib only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
"""Two-sided 95% normal quantile."""


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Args:
        successes: number of correct examples (a float sum is allowed for fractional scores).
        n: number of examples (0 gives the uninformative ``(0.0, 1.0)``).
        z: normal quantile (1.96 for 95%).

    Returns:
        ``(low, high)`` within [0, 1].
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class MetricSummary:
    """A proportion metric over ``n`` examples.

    Attributes:
        value: mean score in [0, 1].
        ci95: Wilson 95% interval ``(low, high)``.
        n: examples scored.
        correct: sum of scores.
    """

    value: float
    ci95: tuple[float, float]
    n: int
    correct: float


def summarize(scores: Sequence[bool | float]) -> MetricSummary:
    """Mean of per-example scores (bools or values in [0, 1]) with a Wilson 95% interval."""
    values = [float(s) for s in scores]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError("scores must lie in [0, 1]")
    n = len(values)
    total = sum(values)
    return MetricSummary(
        value=total / n if n else 0.0, ci95=wilson_interval(total, n), n=n, correct=total
    )
