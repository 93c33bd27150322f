"""The numpy KS implementation against scipy.stats on the same numbers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import special, stats
from scipy.stats._stats_py import _attempt_exact_2kssamp, _compute_prob_outside_square

from edgeloop_agent.drift.ks import (
    MAX_AUTO_N,
    kolmogorov_sf,
    ks_2samp_exact_sf,
    ks_from_histograms,
    ks_pvalue,
    ks_statistic,
    smirnov_sf,
)
from edgeloop_agent.wire.profile import ReferenceProfile, build_reference_profile

# Stated accuracy (docs/drift.md): exact path 1e-12 absolute, asymptotic path 1e-9 relative.
EXACT_ATOL = 1e-12
ASYMP_RTOL = 1e-9


def _grid(n: int) -> np.ndarray:
    # Every branch of the Simard–L'Ecuyer selection: Ruben–Gambino ends, both sides of
    # d = 0.5, and n*d^2 around the 0.754693 / 2.2 / 4 / 18 / 370 switch points.
    nxsq = np.array([0.3, 0.754, 0.76, 1.5, 2.19, 2.21, 3.9, 4.1, 10, 17.9, 18.1, 100, 369])
    d = np.concatenate(
        [
            np.sqrt(nxsq / n),
            [0.5 / n + 1e-12, 0.75 / n, 1.0 / n, 1.3 / n, 0.49, 0.5, 0.51, 0.8],
            [1 - 1.5 / n, 1 - 1 / n, 1 - 0.5 / n] if n > 2 else [],
        ]
    )
    return d[(d > 0) & (d < 1)]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 80, 140, 141, 500, 5000, 60_000, 100_001, 150_000])
def test_kolmogorov_sf_matches_scipy_kstwo(n: int) -> None:
    for d in _grid(n):
        ours = kolmogorov_sf(float(d), n)
        ref = float(stats.kstwo.sf(d, n))
        assert ours == pytest.approx(ref, rel=ASYMP_RTOL, abs=1e-300), (n, d)


@pytest.mark.parametrize("n", [1, 5, 50, 1012, 1013, 20_000])
def test_smirnov_sf_matches_scipy_special_smirnov(n: int) -> None:
    for d in np.linspace(0.0005, 0.9995, 41):
        assert smirnov_sf(n, float(d)) == pytest.approx(
            float(special.smirnov(n, d)), rel=ASYMP_RTOL, abs=1e-300
        ), (n, d)


def _scipy_2samp(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = stats.ks_2samp(x, y)
    d, p = float(r.statistic), float(r.pvalue)
    if any("Exact calculation unsuccessful" in str(w.message) for w in caught):
        # scipy's own exact formula rounded outside [0, 1] (e.g. 1.0000000000000002 for
        # n = m = 7, D = 1/7) and it fell back to the asymptotic value; the exact value
        # is that published closed form (Hodges 1958, eq. for equal n), clipped.
        assert x.size == y.size
        h = round(d * x.size)
        p = min(1.0, _compute_prob_outside_square(x.size, h))
    return d, p


SIZES_EXACT = [(1, 1), (1, 9), (3, 3), (5, 7), (7, 7), (10, 10), (12, 18), (40, 33),
               (100, 250), (257, 1000), (1000, 1000), (64, 6000), (1500, 10_000)]  # fmt: skip


@pytest.mark.parametrize(("n", "m"), SIZES_EXACT)
def test_exact_pvalue_matches_scipy_ks_2samp(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 7919 + m)
    for shift in (0.0, 0.15, 0.5, 2.0):
        x = rng.normal(size=n)
        y = rng.normal(shift, 1.0, size=m)
        d, p_ref = _scipy_2samp(x, y)
        assert ks_statistic(x, y) == pytest.approx(d, abs=1e-12)
        assert ks_pvalue(d, n, m) == pytest.approx(p_ref, abs=EXACT_ATOL), (shift, d)


def test_exact_pvalue_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(11)
    for n, m in [(30, 45), (200, 120), (900, 600)]:
        x = rng.integers(0, 6, size=n).astype(float)
        y = rng.integers(0, 7, size=m).astype(float)
        d, p_ref = _scipy_2samp(x, y)
        assert ks_statistic(x, y) == pytest.approx(d, abs=1e-12)
        assert ks_pvalue(d, n, m) == pytest.approx(p_ref, abs=EXACT_ATOL)


@pytest.mark.parametrize(("n", "m"), [(20_000, 500), (12_000, 12_000), (50_000, 3000)])
def test_asymptotic_pvalue_matches_scipy_ks_2samp(n: int, m: int) -> None:
    assert max(n, m) > MAX_AUTO_N  # scipy's "auto" switches to kstwo here too
    rng = np.random.default_rng(n + m)
    for shift in (0.0, 0.03, 0.1, 0.3):
        x = rng.normal(size=n)
        y = rng.normal(shift, 1.0, size=m)
        r = stats.ks_2samp(x, y)
        assert ks_pvalue(float(r.statistic), n, m) == pytest.approx(
            float(r.pvalue), rel=ASYMP_RTOL, abs=1e-300
        )


def test_vectorised_exact_equals_one_at_a_time() -> None:
    d = np.array([0.0, 0.01, 0.05, 0.08, 0.2, 0.6, 1.0])
    many = ks_2samp_exact_sf(d, 300, 170)
    one = np.array([ks_2samp_exact_sf(float(v), 300, 170) for v in d])
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-15)
    assert many[0] == 1.0 and many[-1] == pytest.approx(2 / special.comb(470, 170), abs=1e-15)


def _binned(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, x, "left"), minlength=edges.size + 1)


@pytest.mark.parametrize("seed", range(12))
def test_binned_statistic_is_within_the_stated_bound_of_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kind = seed % 4
    if kind == 0:
        ref, live = rng.normal(size=4000), rng.normal(0.1 * seed, 1, size=700)
    elif kind == 1:
        ref, live = rng.exponential(size=3000), rng.exponential(1.3, size=900)
    elif kind == 2:  # heavy ties
        ref = rng.poisson(3, size=5000).astype(float)
        live = rng.poisson(3.4, size=800).astype(float)
    else:  # zero-inflated, live partly outside the reference range
        ref = np.where(rng.random(6000) < 0.4, 0.0, rng.gamma(2, size=6000))
        live = np.where(rng.random(500) < 0.2, 0.0, rng.gamma(2.5, size=500) - 0.2)
    col = ReferenceProfile.from_dict(
        build_reference_profile(ref[:, None], ["x"], None, fine_bins=100)
    ).features[0]
    d_binned = ks_from_histograms(col.cdf_at_edges, _binned(live, col.edges))
    d_exact = float(stats.ks_2samp(ref, live).statistic)
    # D_binned <= D_exact <= D_binned + bound, bound <= 1/fine_bins (+ a tie mass when
    # a value's mass is below the guard threshold).
    assert d_binned <= d_exact + 1e-12
    assert d_exact <= d_binned + col.ks_d_bound + 1e-12
    assert col.ks_d_bound <= 1 / 100 + 1 / 400 + 1e-12


def test_binned_statistic_equals_scipy_on_bin_representatives() -> None:
    # Replacing every value by its bin's right edge keeps the ECDFs at the edges and
    # removes everything between them, so scipy's exact D on those numbers is D_binned.
    rng = np.random.default_rng(5)
    ref, live = rng.normal(size=2000), rng.normal(0.2, 1.1, size=300)
    col = ReferenceProfile.from_dict(
        build_reference_profile(ref[:, None], ["x"], None, fine_bins=50)
    ).features[0]
    reps = np.concatenate([col.edges, [col.edges[-1] + 1.0]])
    d_binned = ks_from_histograms(col.cdf_at_edges, _binned(live, col.edges))
    r = stats.ks_2samp(
        reps[np.searchsorted(col.edges, ref)], reps[np.searchsorted(col.edges, live)]
    )
    assert d_binned == pytest.approx(float(r.statistic), abs=1e-12)
    assert ks_pvalue(d_binned, ref.size, live.size) == pytest.approx(
        float(r.pvalue), abs=EXACT_ATOL
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ks_pvalue(1.5, 10, 10), r"d: expected a KS statistic in \[0, 1\]"),
        (lambda: ks_pvalue(0.1, 0, 10), "n: expected a sample size"),
        (lambda: ks_pvalue(0.1, 10, 2.5), "m: expected a sample size"),
        (lambda: ks_pvalue(0.1, 10, 10, "fast"), "method"),
        (lambda: ks_statistic([], [1.0]), "non-empty"),
        (lambda: ks_from_histograms([0.5], [1, 2, 3]), "expected 2 bins"),
        (lambda: ks_from_histograms([0.5], [0, 0]), "no live values"),
        (lambda: ks_2samp_exact_sf(np.array([0.2, -1.0]), 5, 5), "d: expected KS"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


# Sizes where the lattice-path ratios leave a double's range (C(a+b, b) > 1e304). Before
# the log-space path, every one of these returned p = 1.0 (e.g. n = m = 3000, D = 0.0303:
# scipy 0.051). The grid runs up to scipy's exact limit, max(n, m) = 10 000, which is what
# docs/drift.md promises; D is chosen to put scipy's p near each target.
LARGE_EXACT = [(300, 400), (2000, 2000), (3000, 3000), (5000, 3000), (2500, 7000),
               (4000, 10_000), (9999, 10_000), (10_000, 10_000)]  # fmt: skip
LARGE_ATOL = 1e-9


@pytest.mark.parametrize(("n", "m"), LARGE_EXACT)
def test_exact_pvalue_matches_scipy_at_large_sizes(n: int, m: int) -> None:
    g = math.gcd(n, m)
    lcm = n // g * m
    en = round(n * m / (n + m))
    targets = (0.9, 0.3, 0.05, 1e-3, 1e-6, 1e-10)
    ds = np.array([round(float(stats.kstwo.isf(p, en)) * lcm) / lcm for p in targets])
    ours = ks_2samp_exact_sf(ds, n, m)
    for d, p in zip(ds, ours, strict=True):
        ok, _, ref = _attempt_exact_2kssamp(n, m, g, float(d), "two-sided")
        assert ok
        assert p == pytest.approx(ref, abs=LARGE_ATOL), (n, m, d, ref)
        assert ks_pvalue(float(d), n, m, method="exact") == pytest.approx(ref, abs=LARGE_ATOL)


def test_monitor_sized_exact_pvalue_on_raw_data_matches_scipy() -> None:
    # The case: a 5 000-row reference, a 3 000-row window, a 0.2 sd shift. It
    # reported p = 1; scipy says ~1e-13.
    rng = np.random.default_rng(2026)
    x, y = rng.normal(size=5000), rng.normal(0.2, 1.0, size=3000)
    d, p_ref = _scipy_2samp(x, y)
    assert p_ref < 1e-6
    assert ks_pvalue(d, 5000, 3000) == pytest.approx(p_ref, abs=LARGE_ATOL)
    d0, p0 = _scipy_2samp(x, rng.normal(size=3000))
    assert ks_pvalue(d0, 5000, 3000) == pytest.approx(p0, abs=LARGE_ATOL)


def test_monitor_with_a_raised_exact_limit_reports_the_exact_pvalue() -> None:
    # The monitor: n_ref = 5,000, a 3,000-row window, a 0.2 sd shift, with
    # ks_exact_max_nm raised as docs/drift.md suggests for exact fidelity. It reported p = 1.
    from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig

    rng = np.random.default_rng(77)
    profile = build_reference_profile(rng.normal(size=(5000, 1)), ["x"], None)
    cfg = DriftConfig(window=WindowConfig("count", 3000), ks_exact_max_nm=10**8)
    (report,) = DriftMonitor(profile, cfg).update(rng.normal(0.2, 1.0, size=(3000, 1)))
    f = report.features[0]
    ok, _, ref = _attempt_exact_2kssamp(5000, 3000, math.gcd(5000, 3000), f.ks_d, "two-sided")
    assert ok and ref < 1e-6
    assert f.ks_p == pytest.approx(ref, abs=LARGE_ATOL) and "ks" in f.reasons
