"""Continuous outcomes (e.g. squared error): per-variant mean and Welch's t-test.

Agents ship ``(n, sum, sum of squares)``; these add across devices. The variance is recovered
as (Σx² − (Σx)²/n)/(n − 1). That subtraction loses precision when the mean is huge compared
with the spread (relative spread below ~1e-7), which does not happen for losses; values are
clamped at 0 so rounding can never produce a negative variance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from ._validation import check_count, check_finite, check_open_unit
from .results import Interval, TestResult

# Relative slack for the Cauchy–Schwarz consistency check: sums of floats from many devices
# carry rounding error, and a genuine constant series sits exactly on the bound.
_CS_RTOL = 1e-9


@dataclass(frozen=True)
class ContinuousStats:
    """Sufficient statistics of real-valued outcomes: count, sum and sum of squares."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        n = check_count("ContinuousStats.n", self.n)
        total = check_finite("ContinuousStats.total", self.total)
        total_sq = check_finite("ContinuousStats.total_sq", self.total_sq)
        if total_sq < 0.0:
            raise ValueError(f"ContinuousStats.total_sq must be >= 0, got {total_sq}")
        if n == 0 and (total != 0.0 or total_sq != 0.0):
            raise ValueError(
                f"ContinuousStats with n=0 must have total=0 and total_sq=0, "
                f"got total={total}, total_sq={total_sq}"
            )
        if n > 0 and total * total > n * total_sq * (1.0 + _CS_RTOL) + 1e-300:
            raise ValueError(
                f"ContinuousStats is inconsistent: total_sq={total_sq} is smaller than "
                f"total**2/n={total * total / n} (n={n}, total={total}); no real values give that"
            )
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "total_sq", total_sq)

    @classmethod
    def from_values(cls, values: Iterable[float] | np.ndarray) -> ContinuousStats:
        """Aggregate raw values (e.g. per-prediction squared errors)."""
        arr = np.asarray(
            list(values) if not isinstance(values, np.ndarray) else values, dtype=float
        )
        if arr.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("values must all be finite (found NaN or inf)")
        return cls(n=int(arr.size), total=float(arr.sum()), total_sq=float(np.dot(arr, arr)))

    def __add__(self, other: object) -> ContinuousStats:
        if not isinstance(other, ContinuousStats):
            return NotImplemented
        return ContinuousStats(
            self.n + other.n, self.total + other.total, self.total_sq + other.total_sq
        )

    def __radd__(self, other: object) -> ContinuousStats:
        if other == 0:
            return self
        return self.__add__(other)

    @property
    def mean(self) -> float:
        """Sample mean (NaN with no outcomes)."""
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance, ddof=1 (NaN with fewer than 2 outcomes)."""
        if self.n < 2:
            return math.nan
        ss = self.total_sq - self.total * self.total / self.n
        return max(ss, 0.0) / (self.n - 1)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "total_sq": self.total_sq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinuousStats:
        if not isinstance(data, Mapping):
            raise TypeError(
                f"ContinuousStats.from_dict expects a mapping, got {type(data).__name__}"
            )
        missing = [k for k in ("n", "total", "total_sq") if k not in data]
        if missing:
            raise ValueError(f"ContinuousStats.from_dict: missing field(s) {', '.join(missing)}")
        return cls(n=data["n"], total=data["total"], total_sq=data["total_sq"])


def t_interval(stats: ContinuousStats, confidence: float = 0.95) -> Interval:
    """Student-t interval for the mean: x̄ ± t_{n−1} s/√n (NaN with fewer than 2 outcomes)."""
    if not isinstance(stats, ContinuousStats):
        raise TypeError(f"stats must be ContinuousStats, got {type(stats).__name__}")
    confidence = check_open_unit("confidence", confidence)
    if stats.n < 2:
        return Interval(stats.mean, math.nan, math.nan, confidence, "student-t")
    half = float(_st.t.ppf(0.5 + confidence / 2.0, stats.n - 1)) * stats.std / math.sqrt(stats.n)
    return Interval(stats.mean, stats.mean - half, stats.mean + half, confidence, "student-t")


def welch_ttest(a: ContinuousStats, b: ContinuousStats) -> TestResult:
    """Two-sided Welch t-test of mu_a = mu_b from summary statistics; difference is b − a.

    t = (x̄_b − x̄_a)/sqrt(s_a²/n_a + s_b²/n_b), with Welch–Satterthwaite degrees of freedom
    df = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)).
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, ContinuousStats):
            raise TypeError(f"{name} must be ContinuousStats, got {type(value).__name__}")
    name = "Welch t-test"
    if a.n < 2 or b.n < 2:
        return TestResult(name, math.nan, math.nan, b.mean - a.mean, math.nan)
    diff = b.mean - a.mean
    va, vb = a.variance / a.n, b.variance / b.n
    se2 = va + vb
    if se2 == 0.0:
        # Both arms constant: the t statistic is 0/0 or ±inf and df is 0/0.
        return TestResult(name, math.nan, math.nan, diff, math.nan)
    t = diff / math.sqrt(se2)
    df = se2 * se2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    return TestResult(name, t, float(2.0 * _st.t.sf(abs(t), df)), diff, df)
