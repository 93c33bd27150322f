"""Binary outcomes (prediction correct or not): per-variant rate and the two-proportion z-test."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from ._validation import check_count, check_open_unit
from .results import Interval, TestResult


@dataclass(frozen=True)
class BinaryStats:
    """Sufficient statistics of binary outcomes: ``n`` outcomes, ``successes`` of them 1.

    Aggregates from several devices combine with ``+`` (and ``sum(..., BinaryStats())``).
    """

    n: int = 0
    successes: int = 0

    def __post_init__(self) -> None:
        n = check_count("BinaryStats.n", self.n)
        successes = check_count("BinaryStats.successes", self.successes)
        if successes > n:
            raise ValueError(
                f"BinaryStats.successes must be <= n, got successes={successes} > n={n}"
            )
        # Normalise numpy integers to int so equality, hashing and JSON behave.
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "successes", successes)

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[bool] | np.ndarray) -> BinaryStats:
        """Aggregate raw 0/1 (or bool) outcomes."""
        arr = np.asarray(list(outcomes) if not isinstance(outcomes, np.ndarray) else outcomes)
        if arr.ndim != 1:
            raise ValueError(f"outcomes must be one-dimensional, got shape {arr.shape}")
        if arr.size and not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))][0]
            raise ValueError(f"outcomes must be 0/1 or bool, got {bad!r}")
        return cls(n=int(arr.size), successes=int(arr.astype(bool).sum()))

    def __add__(self, other: object) -> BinaryStats:
        if not isinstance(other, BinaryStats):
            return NotImplemented
        return BinaryStats(self.n + other.n, self.successes + other.successes)

    def __radd__(self, other: object) -> BinaryStats:
        # Lets the builtin sum() start from 0.
        if other == 0:
            return self
        return self.__add__(other)

    @property
    def rate(self) -> float:
        """Observed success rate (NaN with no outcomes)."""
        return self.successes / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Plug-in per-outcome variance p(1 − p) (NaN with no outcomes)."""
        p = self.rate
        return p * (1.0 - p)

    def to_dict(self) -> dict[str, int]:
        return {"n": self.n, "successes": self.successes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BinaryStats:
        if not isinstance(data, Mapping):
            raise TypeError(f"BinaryStats.from_dict expects a mapping, got {type(data).__name__}")
        missing = [k for k in ("n", "successes") if k not in data]
        if missing:
            raise ValueError(f"BinaryStats.from_dict: missing field(s) {', '.join(missing)}")
        return cls(n=data["n"], successes=data["successes"])


def wilson_interval(stats: BinaryStats, confidence: float = 0.95) -> Interval:
    """Wilson score interval for the success rate (Wilson 1927; Newcombe 1998, method 3).

    Chosen over the Wald interval because it keeps close to nominal coverage for rates near
    0 or 1, which is where model accuracies live.
    """
    if not isinstance(stats, BinaryStats):
        raise TypeError(f"stats must be BinaryStats, got {type(stats).__name__}")
    confidence = check_open_unit("confidence", confidence)
    if stats.n == 0:
        return Interval(math.nan, math.nan, math.nan, confidence, "wilson")
    n = stats.n
    p = stats.rate
    z = float(_st.norm.ppf(0.5 + confidence / 2.0))
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave ~1e-17 behind.
    lower = 0.0 if stats.successes == 0 else max(0.0, centre - half)
    upper = 1.0 if stats.successes == n else min(1.0, centre + half)
    return Interval(p, lower, upper, confidence, "wilson")


def two_proportion_ztest(a: BinaryStats, b: BinaryStats) -> TestResult:
    """Two-sided pooled two-proportion z-test of p_a = p_b; the difference reported is b − a.

    z = (p̂_b − p̂_a) / sqrt(p̄ (1 − p̄) (1/n_a + 1/n_b)) with the pooled rate p̄ — the
    standard error under the null hypothesis.
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, BinaryStats):
            raise TypeError(f"{name} must be BinaryStats, got {type(value).__name__}")
    name = "two-proportion z-test (pooled)"
    if a.n == 0 or b.n == 0:
        return TestResult(name, math.nan, math.nan, math.nan)
    diff = b.rate - a.rate
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / a.n + 1.0 / b.n))
    if se == 0.0:
        # Pooled rate 0 or 1: every outcome in both arms is identical, so there is no
        # difference to find; z -> 0 is the continuous limit.
        return TestResult(name, 0.0, 1.0, diff)
    z = diff / se
    return TestResult(name, z, float(2.0 * _st.norm.sf(abs(z))), diff)
