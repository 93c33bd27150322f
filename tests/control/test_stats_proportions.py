"""Binary outcomes: BinaryStats, Wilson interval, pooled two-proportion z-test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from edgeloop_control.stats import BinaryStats, two_proportion_ztest, wilson_interval


def test_binary_stats_add_across_devices_equals_pooled_outcomes() -> None:
    rng = np.random.default_rng(7)
    devices = [rng.random(size) < 0.8 for size in (13, 250, 1, 90)]
    pooled = BinaryStats.from_outcomes(np.concatenate(devices))
    summed = sum((BinaryStats.from_outcomes(d) for d in devices), BinaryStats())
    assert summed == pooled
    assert sum(BinaryStats.from_outcomes(d) for d in devices) == pooled
    assert pooled.n == sum(d.size for d in devices)
    assert pooled.successes == int(sum(d.sum() for d in devices))
    assert pooled.rate == pytest.approx(np.concatenate(devices).mean())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": -1, "successes": 0}, ValueError, "BinaryStats.n"),
        ({"n": 5, "successes": 6}, ValueError, "successes=6 > n=5"),
        ({"n": 5.0, "successes": 1}, TypeError, "BinaryStats.n must be a non-negative integer"),
        ({"n": True, "successes": 0}, TypeError, "BinaryStats.n"),
        ({"n": 5, "successes": "3"}, TypeError, "BinaryStats.successes"),
    ],
)
def test_binary_stats_rejects_bad_input(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        BinaryStats(**kwargs)


def test_binary_stats_from_dict_names_missing_field() -> None:
    with pytest.raises(ValueError, match="successes"):
        BinaryStats.from_dict({"n": 3})
    assert BinaryStats.from_dict({"n": np.int64(3), "successes": 2}) == BinaryStats(3, 2)


def test_from_outcomes_rejects_non_binary_values() -> None:
    with pytest.raises(ValueError, match="0/1"):
        BinaryStats.from_outcomes([0, 1, 2])


@pytest.mark.parametrize(
    ("k", "n", "confidence"),
    [(81, 263, 0.95), (15, 148, 0.95), (0, 20, 0.95), (1, 29, 0.95), (29, 29, 0.95),
     (9_700, 10_000, 0.99), (3, 7, 0.8)],
)  # fmt: skip
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ours = wilson_interval(BinaryStats(n, k), confidence)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert ours.lower == pytest.approx(ref.low, abs=1e-12)
    assert ours.upper == pytest.approx(ref.high, abs=1e-12)
    assert ours.estimate == pytest.approx(k / n)


@pytest.mark.parametrize(
    ("k", "n", "lower", "upper"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
     (1, 29, 0.0061, 0.1718)],
)  # fmt: skip
def test_wilson_matches_newcombe_1998_table(k: int, n: int, lower: float, upper: float) -> None:
    # Newcombe R.G. (1998), "Two-sided confidence intervals for the single proportion:
    # comparison of seven methods", Statistics in Medicine 17:857-872, Table I, method 3
    # (Wilson score, no continuity correction), printed to 4 decimals.
    ci = wilson_interval(BinaryStats(n, k))
    assert ci.lower == pytest.approx(lower, abs=5e-5)
    assert ci.upper == pytest.approx(upper, abs=5e-5)


def test_wilson_without_outcomes_is_undefined_not_an_error() -> None:
    ci = wilson_interval(BinaryStats())
    assert math.isnan(ci.estimate) and math.isnan(ci.lower) and math.isnan(ci.upper)
    assert ci.to_dict()["lower"] is None


def test_wilson_rejects_bad_confidence() -> None:
    with pytest.raises(ValueError, match="confidence must be strictly between 0 and 1, got 95"):
        wilson_interval(BinaryStats(10, 5), 95)


def _z_reference(a: BinaryStats, b: BinaryStats) -> tuple[float, float]:
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se = np.sqrt(pooled * (1 - pooled) * (1 / a.n + 1 / b.n))
    z = (b.successes / b.n - a.successes / a.n) / se
    return z, 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize(
    ("a", "b"),
    [((1000, 850), (1000, 880)), ((5000, 4800), (123, 110)), ((40, 3), (60, 2)),
     ((10_000, 9_000), (10_000, 9_000))],
)  # fmt: skip
def test_ztest_matches_direct_scipy_norm(a: tuple[int, int], b: tuple[int, int]) -> None:
    sa, sb = BinaryStats(*a), BinaryStats(*b)
    result = two_proportion_ztest(sa, sb)
    z, p = _z_reference(sa, sb)
    assert result.statistic == pytest.approx(z, rel=1e-12, abs=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.difference == pytest.approx(sb.rate - sa.rate)
    assert result.df is None


def test_ztest_squared_equals_uncorrected_chi_square_of_the_2x2_table() -> None:
    a, b = BinaryStats(1000, 850), BinaryStats(1200, 1050)
    table = [[a.successes, a.n - a.successes], [b.successes, b.n - b.successes]]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    result = two_proportion_ztest(a, b)
    assert result.statistic**2 == pytest.approx(chi2, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-10)


def test_ztest_stat_trek_worked_example() -> None:
    # Stat Trek, "Hypothesis Test: Difference in Proportions", Problem 1 (stattrek.com):
    # 38% of 100 women and 51% of 200 men caught a cold. Printed: pooled p = 0.467,
    # SE = 0.061, z = -2.13 (women - men), P-value = 0.017 + 0.017 = 0.034. The printed values
    # come from the rounded z, hence the tolerances.
    women, men = BinaryStats(100, 38), BinaryStats(200, 102)
    result = two_proportion_ztest(men, women)  # difference is b - a = women - men
    assert result.statistic == pytest.approx(-2.13, abs=5e-3)
    assert result.p_value == pytest.approx(0.034, abs=1e-3)
    assert result.difference == pytest.approx(0.38 - 0.51)


def test_ztest_pauling_vitamin_c_worked_example() -> None:
    # Pauling (1971, PNAS 68:2678) skier trial: colds in 31 of 140 on placebo, 17 of 139 on
    # vitamin C. Worked as a pooled two-proportion z-test in SUNY Albany MAT108 notes, ch. 28
    # ("Two-Sample Test for Proportions"): z = 2.19, one-sided p about 1.4%, chi-square 4.8.
    placebo, vitamin_c = BinaryStats(140, 31), BinaryStats(139, 17)
    result = two_proportion_ztest(vitamin_c, placebo)
    assert result.statistic == pytest.approx(2.19, abs=5e-3)
    assert result.p_value / 2 == pytest.approx(0.014, abs=5e-4)
    assert result.statistic**2 == pytest.approx(4.8, abs=0.05)


def test_ztest_degenerate_cases() -> None:
    empty = two_proportion_ztest(BinaryStats(), BinaryStats(10, 5))
    assert math.isnan(empty.statistic) and math.isnan(empty.p_value)
    # Every outcome identical in both arms: no difference, the z -> 0 limit.
    same = two_proportion_ztest(BinaryStats(50, 50), BinaryStats(70, 70))
    assert (same.statistic, same.p_value, same.difference) == (0.0, 1.0, 0.0)
    with pytest.raises(TypeError, match="b must be BinaryStats"):
        two_proportion_ztest(BinaryStats(1, 1), (1, 1))  # type: ignore[arg-type]
