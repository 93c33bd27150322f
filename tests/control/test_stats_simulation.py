"""Monte Carlo checks of the sequential test under continuous monitoring.

A/A experiments (no true difference) are monitored after every batch. The always-valid
p-value must keep the chance of ever declaring a difference at or below alpha; naive
fixed-horizon testing at the same looks must not (that is the peeking problem the mSPRT
fixes). Batches are drawn vectorised with numpy; the statistics under test run as they do in
production, one update per look.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_control.stats import (
    BinaryStats,
    ContinuousStats,
    MixtureSPRT,
    two_proportion_ztest,
    welch_ttest,
)

ALPHA = 0.05
RUNS, LOOKS, BATCH = 500, 50, 200
# A rate that is really <= alpha exceeds this with probability < 0.1 % in RUNS runs.
UPPER_SLACK = stats.binom.ppf(0.999, RUNS, ALPHA) / RUNS


def _monitor_binary(
    successes_a: np.ndarray, successes_b: np.ndarray, batch_a: int, batch_b: int
) -> tuple[list[MixtureSPRT], np.ndarray]:
    runs, looks = successes_a.shape
    tests = [MixtureSPRT("binary", alpha=ALPHA) for _ in range(runs)]
    naive = np.zeros(runs, dtype=bool)
    for r, test in enumerate(tests):
        for k in range(looks):
            test.update(
                BinaryStats(batch_a, int(successes_a[r, k])),
                BinaryStats(batch_b, int(successes_b[r, k])),
            )
            if not naive[r]:
                naive[r] = two_proportion_ztest(test.champion, test.challenger).p_value <= ALPHA
    return tests, naive


def _monitor_losses(
    rng: np.random.Generator, runs: int, scale_a: float, scale_b: float
) -> tuple[list[MixtureSPRT], np.ndarray]:
    tests = [MixtureSPRT("continuous", alpha=ALPHA) for _ in range(runs)]
    naive = np.zeros(runs, dtype=bool)
    for _ in range(LOOKS):
        # Squared errors of a Gaussian residual: skewed, like real losses.
        la = rng.normal(0.0, scale_a, (runs, BATCH)) ** 2
        lb = rng.normal(0.0, scale_b, (runs, BATCH)) ** 2
        sums_a, sq_a = la.sum(axis=1), np.einsum("ij,ij->i", la, la)
        sums_b, sq_b = lb.sum(axis=1), np.einsum("ij,ij->i", lb, lb)
        for r, test in enumerate(tests):
            test.update(
                ContinuousStats(BATCH, sums_a[r], sq_a[r]),
                ContinuousStats(BATCH, sums_b[r], sq_b[r]),
            )
            if not naive[r]:
                naive[r] = welch_ttest(test.champion, test.challenger).p_value <= ALPHA
    return tests, naive


@pytest.mark.parametrize(("batch_a", "batch_b"), [(BATCH, BATCH), (360, 40)])
def test_binary_aa_false_positive_rate_under_continuous_monitoring(
    batch_a: int, batch_b: int
) -> None:
    rng = np.random.default_rng(20_240_601 + batch_b)
    tests, naive = _monitor_binary(
        rng.binomial(batch_a, 0.85, (RUNS, LOOKS)),
        rng.binomial(batch_b, 0.85, (RUNS, LOOKS)),
        batch_a,
        batch_b,
    )
    # The p-value is a running minimum, so the final value says whether it ever crossed.
    sequential_rate = np.mean([t.p_value <= ALPHA for t in tests])
    naive_rate = naive.mean()
    assert sequential_rate <= UPPER_SLACK, (sequential_rate, naive_rate)
    assert naive_rate > UPPER_SLACK, (sequential_rate, naive_rate)
    assert not any(t.decision().action == "promote" and t.p_value > ALPHA for t in tests)


def test_continuous_aa_false_positive_rate_under_continuous_monitoring() -> None:
    tests, naive = _monitor_losses(np.random.default_rng(7), RUNS, 1.0, 1.0)
    sequential_rate = np.mean([t.p_value <= ALPHA for t in tests])
    naive_rate = naive.mean()
    assert sequential_rate <= UPPER_SLACK, (sequential_rate, naive_rate)
    assert naive_rate > UPPER_SLACK, (sequential_rate, naive_rate)


def test_binary_power_detects_a_better_and_a_worse_challenger() -> None:
    rng = np.random.default_rng(99)
    runs = 100
    base = rng.binomial(BATCH, 0.85, (runs, LOOKS))
    better, _ = _monitor_binary(base, rng.binomial(BATCH, 0.88, (runs, LOOKS)), BATCH, BATCH)
    worse, _ = _monitor_binary(base, rng.binomial(BATCH, 0.82, (runs, LOOKS)), BATCH, BATCH)
    better_actions = [t.decision().action for t in better]
    worse_actions = [t.decision().action for t in worse]
    # A 3-point accuracy change over 10,000 outcomes per arm is about 6 standard errors.
    assert better_actions.count("promote") >= 0.9 * runs, better_actions
    assert worse_actions.count("rollback") >= 0.9 * runs, worse_actions
    assert "rollback" not in better_actions and "promote" not in worse_actions


def test_continuous_power_lower_loss_is_promoted() -> None:
    runs = 100
    tests, _ = _monitor_losses(np.random.default_rng(123), runs, 1.0, 0.9)  # loss 1.0 vs 0.81
    actions = [t.decision().action for t in tests]
    assert actions.count("promote") >= 0.9 * runs, actions
    assert "rollback" not in actions
