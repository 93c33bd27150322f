"""A/A false decisions of the mSPRT across rates, allocations and metric kinds.

The full grid (p in {0.5, 0.9, 0.97, 0.99, 0.995} x four allocations x binary and continuous,
1,000 runs each) is ``bench/sim_msprt_aa.py``; this is a smaller grid that still covers the
cells that broke: a small arm that has seen no failure yet reported variance 0 with the
per-arm plug-in, and at p = 0.99 with a 90/10 split 28 % of A/A runs ended in a false
decision at alpha = 5 %.
"""

from __future__ import annotations

import zlib

import pytest
from scipy import stats

from edgeloop_control.stats import BinaryStats, MixtureSPRT
from edgeloop_control.stats.simulation import ALLOCATIONS, simulate_aa

ALPHA = 0.05
RUNS = 200
# A rate really <= alpha exceeds this with probability < 0.1 % in RUNS runs.
SLACK = stats.binom.ppf(0.999, RUNS, ALPHA) / RUNS


@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("p", [0.5, 0.97, 0.995])
@pytest.mark.parametrize("allocation", list(ALLOCATIONS))
def test_aa_false_decisions_stay_at_or_below_alpha(kind: str, p: float, allocation: str) -> None:
    seed = zlib.crc32(f"{kind} {p} {allocation}".encode())
    result = simulate_aa(kind, p, allocation, runs=RUNS, looks=40, alpha=ALPHA, seed=seed)
    assert result.rate <= SLACK, result


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_the_case_from_the_audit_p_099_at_90_10(kind: str) -> None:
    result = simulate_aa(kind, 0.99, "90/10", runs=RUNS, looks=40, alpha=ALPHA, seed=99)
    assert result.rate <= SLACK, result


def test_a_small_arm_without_failures_does_not_make_the_difference_look_precise() -> None:
    from edgeloop_control.stats.sequential import difference_variance

    # 900 outcomes at 99 % in the big arm, 100 perfect ones in the small arm.
    a, b = BinaryStats(900, 891), BinaryStats(100, 100)
    plug_in = 0.01 * 0.99 / 900 + 0.0
    pooled = (991 / 1000) * (9 / 1000) * (1 / 900 + 1 / 100)
    assert difference_variance(a, b) == pytest.approx(pooled, rel=1e-12)
    assert difference_variance(a, b) > 9 * plug_in
    # ... and a 100-point lead of the small arm is not a rejection after one look.
    test = MixtureSPRT("binary", min_samples_per_arm=100)
    test.update(a, b)
    assert test.p_value > ALPHA
