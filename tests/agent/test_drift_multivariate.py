"""Multivariate drift by PCA reconstruction error: against scikit-learn's PCA on the same
rows, a correlation break that per-feature tests cannot see, and the null rate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.drift.multivariate import PCAMonitor, _errors, build_pca_profile
from edgeloop_agent.wire.profile import build_reference_profile

NAMES = ["a", "b", "c", "d"]


def _correlated(rng: np.random.Generator, n: int) -> np.ndarray:
    base = rng.normal(size=(n, 2))
    noise = 0.1 * rng.normal(size=(n, 2))
    return np.column_stack(
        [base[:, 0], base[:, 0] + noise[:, 0], base[:, 1], -base[:, 1] + noise[:, 1]]
    )


def test_reconstruction_errors_equal_sklearn_pca_on_the_same_rows() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    X = _correlated(rng, 1000)
    prof = build_pca_profile(X, NAMES, variance=0.9)
    mean, sd = np.array(prof["mean"]), np.array(prof["sd"])
    comps = np.array(prof["components"])
    # Refit scikit-learn on the same standardised fitting half and compare errors on new rows.
    order = np.random.default_rng(0).permutation(1000)
    fit = X[order[:500]]
    pca = PCA(n_components=comps.shape[0]).fit((fit - fit.mean(0)) / fit.std(0, ddof=1))
    new = _correlated(rng, 50)
    z = (new - mean) / sd
    want = np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1)
    # sklearn centres on the mean of z over the fitting rows, which is 0 here.
    assert np.allclose(pca.mean_, 0.0, atol=1e-12)
    np.testing.assert_allclose(_errors(new, mean, sd, comps), want, rtol=1e-9, atol=1e-12)


def test_a_correlation_break_is_seen_where_per_feature_tests_see_nothing() -> None:
    rng = np.random.default_rng(2)
    ref = _correlated(rng, 4000)
    live = _correlated(rng, 500)
    live[:, 1] = rng.permutation(live[:, 1])  # same marginal, the link to "a" is gone
    [rep] = PCAMonitor(build_pca_profile(ref, NAMES), 500).update(live)
    assert rep.p < 1e-10 and rep.mean_error > 3 * rep.reference_mean_error
    profile = build_reference_profile(ref, NAMES, None)
    (per_feature,) = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 500))).update(
        live
    )
    assert not per_feature.dataset_drift


def test_null_windows_are_flagged_at_most_alpha_of_the_time() -> None:
    rng = np.random.default_rng(3)
    profile = build_pca_profile(_correlated(rng, 4000), NAMES)
    mon = PCAMonitor(profile, 200)
    reports = mon.update(_correlated(rng, 200 * 300))
    assert len(reports) == 300
    rate = np.mean([r.p < 0.05 for r in reports])
    assert rate <= stats.binom.ppf(0.999, 300, 0.05) / 300


def test_rows_with_missing_values_are_skipped_and_memory_is_fixed() -> None:
    rng = np.random.default_rng(4)
    mon = PCAMonitor(build_pca_profile(_correlated(rng, 1000), NAMES), 10)
    before = mon.nbytes
    X = _correlated(rng, 15)
    X[::3, 2] = np.nan  # 5 of 15 rows incomplete
    assert len(mon.update(X)) == 1 and mon.nbytes == before


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build_pca_profile(np.zeros((100, 4)), NAMES), "at least 200 complete rows"),
        (lambda: build_pca_profile(np.zeros((300, 3)), NAMES), "expected"),
        (lambda: PCAMonitor({"kind": "x"}, 10), "build_pca_profile"),
    ],
)
def test_bad_input_is_named(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call()
