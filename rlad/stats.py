"""Confidence intervals for learning claims over seeds: a mean with its 95 % interval, and a paired difference.

One run proves nothing on this project (float results differ between machines, and a 128-question evaluation
carries a point or two of sampling error), so learning results are means over seeds with Student-t intervals,
and comparisons (GRPO vs its SFT warm start, an ablation) are differences paired by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "mean_ci", "paired_difference", "t975"]

# Two-sided 95 % quantiles of Student's t, t_{0.975, df}, df = 1..30 (standard tables); beyond, the normal 1.960
# is within 0.04 of the truth.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df={df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and the half-width of its 95 % confidence interval (NaN for n = 1)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0: a difference beyond noise."""
        return self.low > 0 or self.high < 0

    def marked(self) -> str:
        """The interval as text, with `` *`` when it excludes 0 (how the tables mark a difference beyond noise)."""
        return f"{self}{' *' if self.excludes_zero() else ''}"

    def __str__(self) -> str:
        return f"{self.mean:.3f}" if math.isnan(self.half_width) else f"{self.mean:.3f} ± {self.half_width:.3f}"


def mean_ci(values: Sequence[float]) -> Interval:
    """Mean and 95 % Student-t interval of independent values (seeds)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, float("nan"), 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, t975(n - 1) * sd / math.sqrt(n), n)


def paired_difference(after: Sequence[float], before: Sequence[float]) -> Interval:
    """``after - before`` paired by position (the same seed), with the 95 % interval of the mean difference."""
    if len(after) != len(before):
        raise ValueError(f"paired values differ in number: {len(after)} and {len(before)}")
    return mean_ci([a - b for a, b in zip(after, before, strict=True)])
