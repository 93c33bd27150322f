"""Continuous outcomes: ContinuousStats, Student-t interval, Welch's t-test from summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from edgeloop_control.stats import ContinuousStats, t_interval, welch_ttest


def _losses(seed: int, n: int, scale: float = 1.0) -> np.ndarray:
    # Squared errors: skewed and non-negative, like the losses the agents aggregate.
    return np.random.default_rng(seed).normal(0.0, scale, n) ** 2


def test_sums_from_devices_reproduce_numpy_moments() -> None:
    values = _losses(1, 1_000)
    parts = np.array_split(values, [3, 400, 401])  # includes a one-value device
    summed = sum((ContinuousStats.from_values(p) for p in parts), ContinuousStats())
    assert summed.n == values.size
    assert summed.mean == pytest.approx(values.mean(), rel=1e-12)
    assert summed.variance == pytest.approx(values.var(ddof=1), rel=1e-9)
    assert summed.std == pytest.approx(values.std(ddof=1), rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 2, "total": 1.0, "total_sq": -1.0}, ValueError, "total_sq must be >= 0"),
        ({"n": 0, "total": 1.0, "total_sq": 1.0}, ValueError, "n=0 must have total=0"),
        ({"n": 2, "total": 10.0, "total_sq": 1.0}, ValueError, "inconsistent"),
        ({"n": 2, "total": math.nan, "total_sq": 1.0}, ValueError, "ContinuousStats.total"),
        ({"n": 2, "total": 1.0, "total_sq": math.inf}, ValueError, "ContinuousStats.total_sq"),
        ({"n": 2, "total": "1", "total_sq": 1.0}, TypeError, "ContinuousStats.total"),
        ({"n": -3, "total": 0.0, "total_sq": 0.0}, ValueError, "ContinuousStats.n"),
    ],
)
def test_continuous_stats_rejects_bad_input(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ContinuousStats(**kwargs)


def test_constant_values_sit_on_the_consistency_bound() -> None:
    # n * total_sq == total**2 exactly for a constant series; rounding must not reject it.
    s = ContinuousStats.from_values(np.full(1_000, 0.1))
    assert s.variance == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="finite"):
        ContinuousStats.from_values([1.0, math.nan])
    with pytest.raises(ValueError, match="missing field"):
        ContinuousStats.from_dict({"n": 2, "total": 1.0})


@pytest.mark.parametrize(("n", "confidence"), [(2, 0.95), (30, 0.95), (5_000, 0.99), (12, 0.5)])
def test_t_interval_matches_scipy_one_sample_t(n: int, confidence: float) -> None:
    values = _losses(n, n, scale=0.3)
    ours = t_interval(ContinuousStats.from_values(values), confidence)
    ref = stats.ttest_1samp(values, 0.0).confidence_interval(confidence_level=confidence)
    assert ours.estimate == pytest.approx(values.mean(), rel=1e-12)
    assert ours.lower == pytest.approx(ref.low, rel=1e-9, abs=1e-12)
    assert ours.upper == pytest.approx(ref.high, rel=1e-9, abs=1e-12)


def test_t_interval_needs_two_values() -> None:
    ci = t_interval(ContinuousStats.from_values([0.4]))
    assert ci.estimate == 0.4 and math.isnan(ci.lower) and math.isnan(ci.upper)


@pytest.mark.parametrize(
    ("n_a", "n_b", "scale_a", "scale_b"),
    [(50, 50, 1.0, 1.0), (20, 400, 1.0, 1.3), (1_000, 37, 0.5, 2.0), (2, 3, 1.0, 1.0)],
)
def test_welch_matches_scipy_from_stats_and_raw(
    n_a: int, n_b: int, scale_a: float, scale_b: float
) -> None:
    xa, xb = _losses(n_a, n_a, scale_a), _losses(n_b + 1, n_b, scale_b)
    a, b = ContinuousStats.from_values(xa), ContinuousStats.from_values(xb)
    ours = welch_ttest(a, b)
    # scipy tests mean1 - mean2, ours is b - a: pass the challenger first.
    ref = stats.ttest_ind_from_stats(b.mean, b.std, b.n, a.mean, a.std, a.n, equal_var=False)
    raw = stats.ttest_ind(xb, xa, equal_var=False)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.statistic == pytest.approx(raw.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(raw.pvalue, rel=1e-9)
    assert ours.df == pytest.approx(raw.df, rel=1e-9)
    assert ours.difference == pytest.approx(xb.mean() - xa.mean(), rel=1e-12)


def test_welch_degenerate_cases() -> None:
    few = welch_ttest(ContinuousStats.from_values([1.0]), ContinuousStats.from_values([1.0, 2.0]))
    assert math.isnan(few.statistic) and math.isnan(few.p_value)
    flat = welch_ttest(
        ContinuousStats.from_values([1.0, 1.0]), ContinuousStats.from_values([3.0, 3.0])
    )
    assert math.isnan(flat.p_value) and flat.difference == 2.0
    assert flat.to_dict()["p_value"] is None
    with pytest.raises(TypeError, match="a must be ContinuousStats"):
        welch_ttest(object(), ContinuousStats())  # type: ignore[arg-type]
