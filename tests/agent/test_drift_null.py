"""False alarms of the drift monitor when nothing drifted, including small references.

With a 100-row reference and 20 features, 54 % of null windows were flagged: PSI >= 0.2 was
a fixed threshold outside the multiple-testing family, and with 100 reference rows the
reference's own sampling noise alone puts PSI above 0.2 on ~15 % of windows per feature.
The fuller simulation (more runs, reference sizes 100..5,000) is bench/sim_drift_null.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import (
    MIN_PSI_REFERENCE,
    ReferenceProfile,
    SmallReferenceWarning,
    build_reference_profile,
)

ALPHA = 0.05
FEATURES = 20
WINDOW = 200


def _null_rate(n_ref: int, runs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    names = [f"f{j}" for j in range(FEATURES)]
    flagged = 0
    for _ in range(runs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallReferenceWarning)
            profile = build_reference_profile(rng.normal(size=(n_ref, FEATURES)), names, None)
        monitor = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", WINDOW)))
        (report,) = monitor.update(rng.normal(size=(WINDOW, FEATURES)))
        flagged += report.dataset_drift
    return flagged / runs


@pytest.mark.parametrize("n_ref", [100, 300])
def test_null_windows_are_flagged_at_most_alpha_of_the_time(n_ref: int) -> None:
    runs = 100
    slack = stats.binom.ppf(0.999, runs, ALPHA) / runs
    assert _null_rate(n_ref, runs, seed=n_ref) <= slack


def test_a_small_reference_is_monitored_by_ks_only_with_a_warning() -> None:
    rng = np.random.default_rng(4)
    with pytest.warns(SmallReferenceWarning, match=r"fewer than 200 non-missing .*\(a\)"):
        d = build_reference_profile(rng.normal(size=(150, 1)), ["a"], None)
    profile = ReferenceProfile.from_dict(d)
    live = rng.normal(0.7, 1.0, size=(400, 1))  # a 0.7 sd shift: PSI far above 0.2
    (report,) = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 400))).update(live)
    f = report.features[0]
    assert f.psi >= 0.2 and np.isnan(f.psi_p) and "psi" not in f.reasons
    assert "ks" in f.reasons  # the shift is still caught, by KS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at the minimum
        build_reference_profile(rng.normal(size=(MIN_PSI_REFERENCE, 1)), ["a"], None)


def test_psi_p_value_is_pearsons_homogeneity_test_on_the_psi_bins() -> None:
    rng = np.random.default_rng(8)
    profile = ReferenceProfile.from_dict(
        build_reference_profile(rng.normal(size=(1000, 3)), ["a", "b", "c"], None)
    )
    live = rng.normal(0.15, 1.0, size=(300, 3))
    (report,) = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 300))).update(live)
    for j, (f, col) in enumerate(zip(report.features, profile.features, strict=True)):
        ref_counts = np.add.reduceat(col.counts, col.psi_starts)
        fine = np.bincount(
            np.searchsorted(col.edges, live[:, j], "left"), minlength=col.edges.size + 1
        )
        live_counts = np.add.reduceat(fine, col.psi_starts)
        table = np.vstack([ref_counts, live_counts])
        want = stats.chi2_contingency(table, correction=False).pvalue
        assert f.psi_p == pytest.approx(want, rel=1e-10)
