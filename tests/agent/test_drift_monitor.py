"""DriftMonitor end to end: statistics vs direct numpy / scipy, decisions, windows, input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from edgeloop_agent.drift import DriftConfig, DriftMonitor, DriftReport, WindowConfig
from edgeloop_agent.wire.profile import ColumnProfile, ReferenceProfile, build_reference_profile

EPS = 1e-4


def _profile(ref: np.ndarray, out: np.ndarray | None = None, **kw: int) -> ReferenceProfile:
    names = [f"f{j}" for j in range(ref.shape[1])]
    d = build_reference_profile(ref, names, out, **kw)
    return ReferenceProfile.from_dict(json.loads(json.dumps(d)))


def _direct(col: ColumnProfile, x: np.ndarray) -> dict[str, float]:
    """PSI, binned D and missing rate of raw live values, computed the plain way."""
    finite = x[np.isfinite(x)]
    m = finite.size
    fine = np.bincount(np.searchsorted(col.edges, finite, "left"), minlength=col.edges.size + 1)
    coarse = np.add.reduceat(fine, col.psi_starts) / m
    ref = col.psi_proportions
    a, e = np.maximum(coarse, EPS), np.maximum(ref, EPS)
    live_cdf = np.cumsum(fine)[:-1] / m
    return {
        "psi": float(np.sum((a - e) * np.log(a / e))),
        "ks_d": float(np.max(np.abs(col.cdf_at_edges - live_cdf))),
        "missing_rate": 1 - m / x.size,
        "n": m,
    }


def _scipy_binned(col: ColumnProfile, x: np.ndarray, ref_values: np.ndarray) -> tuple[float, float]:
    # Values replaced by their bin's right edge: scipy's exact KS on these numbers is the
    # binned test (same ECDFs at the edges, same n and m).
    reps = np.concatenate([col.edges, [col.edges[-1] + 1.0]])
    live = x[np.isfinite(x)]
    ref = ref_values[np.isfinite(ref_values)]
    r = stats.ks_2samp(
        reps[np.searchsorted(col.edges, ref)], reps[np.searchsorted(col.edges, live)]
    )
    return float(r.statistic), float(r.pvalue)


def _one_window(profile: ReferenceProfile, X: np.ndarray, out=None, **cfg) -> DriftReport:  # type: ignore[no-untyped-def]
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", X.shape[0]), **cfg))
    reports = mon.update(X, out)
    assert len(reports) == 1 and mon.report() is reports[0]
    return reports[0]


@pytest.mark.parametrize(("n_ref", "n_live"), [(300, 250), (4000, 700), (15_000, 1200)])
def test_statistics_equal_direct_computation_and_scipy(n_ref: int, n_live: int) -> None:
    rng = np.random.default_rng(n_ref)
    ref = np.column_stack(
        [
            rng.normal(size=n_ref),
            rng.exponential(size=n_ref),
            rng.poisson(2, size=n_ref).astype(float),
            np.where(rng.random(n_ref) < 0.1, np.nan, rng.normal(size=n_ref)),
        ]
    )
    ref_out = rng.random(n_ref)
    live = np.column_stack(
        [
            rng.normal(0.3, 1, size=n_live),
            rng.exponential(1.1, size=n_live),
            rng.poisson(2.2, size=n_live).astype(float),
            np.where(rng.random(n_live) < 0.25, np.nan, rng.normal(size=n_live)),
        ]
    )
    live[::97, 0] = np.inf
    live_out = rng.beta(2, 2, size=n_live)
    profile = _profile(ref, ref_out)
    rep = _one_window(profile, live, live_out)
    cols = [*rep.features, rep.output]
    data = [*live.T, live_out]
    refs = [*ref.T, ref_out]
    for col_prof, got, x, r in zip(profile.columns, cols, data, refs, strict=True):
        assert got is not None
        want = _direct(col_prof, x)
        assert got.psi == pytest.approx(want["psi"], abs=1e-9)
        assert got.ks_d == pytest.approx(want["ks_d"], abs=1e-12)
        assert got.missing_rate == pytest.approx(want["missing_rate"], abs=1e-15)
        assert got.n == want["n"]
        d_sc, p_sc = _scipy_binned(col_prof, x, r)
        assert got.ks_d == pytest.approx(d_sc, abs=1e-12)
        exact = max(n_ref, n_live) <= 10_000 and n_ref * want["n"] <= 100_000
        if exact:  # same distribution as scipy's exact path
            assert got.ks_p == pytest.approx(p_sc, abs=1e-12)
        elif max(n_ref, n_live) > 10_000:  # scipy is asymptotic too
            assert got.ks_p == pytest.approx(p_sc, rel=1e-9)
        else:  # asymptotic where scipy is exact: documented deviation, < 6 % here
            assert got.ks_p == pytest.approx(p_sc, rel=0.06, abs=1e-12)
        # Binned D vs the exact statistic on the raw numbers: within the stated bound.
        d_raw = float(stats.ks_2samp(r[np.isfinite(r)], x[np.isfinite(x)]).statistic)
        assert got.ks_d <= d_raw + 1e-12
        assert d_raw <= got.ks_d + got.ks_d_bound + 1e-12


def test_adjusted_pvalues_follow_the_configured_correction() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3000, 12))
    live = rng.normal(size=(600, 12))
    live[:, :3] += np.array([0.1, 0.15, 0.2])
    profile = _profile(ref)
    for correction in ("bh", "bonferroni"):
        rep = _one_window(profile, live, correction=correction)
        # One family: every feature's KS p-value and PSI p-value, adjusted together.
        p = np.array([f.ks_p for f in rep.features] + [f.psi_p for f in rep.features])
        adj = np.array(
            [f.ks_p_adjusted for f in rep.features] + [f.psi_p_adjusted for f in rep.features]
        )
        if correction == "bh":
            np.testing.assert_allclose(adj, stats.false_discovery_control(p), rtol=1e-12)
        else:
            np.testing.assert_allclose(adj, np.minimum(p * p.size, 1.0), rtol=1e-12)
        for f in rep.features:
            assert ("ks" in f.reasons) == (f.ks_p_adjusted < 0.05)
            assert ("psi" in f.reasons) == (f.psi >= 0.2 and f.psi_p_adjusted < 0.05)


def test_mean_shift_of_half_a_standard_deviation_is_detected() -> None:
    hits = flagged_right = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        ref = rng.normal(size=(2000, 10))
        live = rng.normal(size=(500, 10))
        live[:, 4] += 0.5
        rep = _one_window(_profile(ref), live)
        hits += rep.dataset_drift
        flagged_right += rep.features[4].drift
    assert hits == 20 and flagged_right == 20


@pytest.mark.parametrize("correction", ["bh", "bonferroni"])
def test_no_drift_false_positive_rate_is_at_most_alpha(correction: str) -> None:
    alpha, n_seeds = 0.05, 200
    fp = 0
    for seed in range(n_seeds):
        rng = np.random.default_rng(10_000 + seed)
        ref = rng.normal(size=(2000, 8))
        live = rng.normal(size=(300, 8))
        rep = _one_window(_profile(ref), live, alpha=alpha, correction=correction)
        assert rep.enough_data
        fp += rep.dataset_drift
    slack = 3 * math.sqrt(alpha * (1 - alpha) / n_seeds)  # three binomial standard errors
    assert fp / n_seeds <= alpha + slack


def test_too_few_samples_give_no_decision() -> None:
    rng = np.random.default_rng(2)
    profile = _profile(rng.normal(size=(1000, 3)))
    rep = _one_window(profile, rng.normal(3.0, 1, size=(50, 3)), min_samples=200)
    assert not rep.enough_data and not rep.dataset_drift
    assert all(not f.drift for f in rep.features)
    assert all(f.ks_d > 0.5 and math.isnan(f.ks_p_adjusted) for f in rep.features)


def test_missing_rate_increase_is_flagged() -> None:
    rng = np.random.default_rng(3)
    profile = _profile(rng.normal(size=(1000, 2)))
    live = rng.normal(size=(400, 2))
    live[:100, 1] = np.nan
    rep = _one_window(profile, live)
    assert rep.features[1].missing_rate == 0.25 and rep.features[1].reasons == ("missing",)
    assert rep.features[0].reasons == () and rep.dataset_drift


def test_constant_and_all_missing_reference_features() -> None:
    rng = np.random.default_rng(4)
    ref = np.column_stack([np.full(500, 2.0), np.full(500, np.nan), rng.normal(size=500)])
    profile = _profile(ref)
    same = np.column_stack([np.full(300, 2.0), rng.normal(size=300), rng.normal(size=300)])
    rep = _one_window(profile, same)
    assert rep.features[0].ks_d == 0.0 and rep.features[0].psi == 0.0
    assert not rep.features[0].drift
    assert math.isnan(rep.features[1].ks_d) and math.isnan(rep.features[1].psi)
    assert rep.features[1].missing_rate == 0.0 and not rep.features[1].drift
    moved = same.copy()
    moved[:, 0] = 2.5
    rep = _one_window(profile, moved)
    assert rep.features[0].ks_d == 1.0 and rep.features[0].drift


def _stream(seed: int, n: int, n_features: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    X[rng.random(X.shape) < 0.02] = np.nan
    X[n // 2 :, 1] += 0.4
    return X


def test_batch_boundaries_do_not_change_reports() -> None:
    rng = np.random.default_rng(5)
    profile = _profile(rng.normal(size=(2000, 5)), rng.random(2000))
    X = _stream(6, 2500)
    out = rng.random(2500)
    cfg = DriftConfig(window=WindowConfig("count", 400, 100))
    whole = DriftMonitor(profile, cfg).update(X, out)
    singles_mon = DriftMonitor(profile, cfg)
    singles = [r for i in range(X.shape[0]) for r in singles_mon.update(X[i], out[i : i + 1])]
    chunked_mon = DriftMonitor(profile, cfg)
    chunked: list[DriftReport] = []
    i = 0
    while i < X.shape[0]:
        k = int(rng.integers(1, 300))
        chunked += chunked_mon.update(X[i : i + k], out[i : i + k])
        i += k
    assert len(whole) == (2500 - 400) // 100 + 1
    assert [r.to_dict() for r in whole] == [r.to_dict() for r in singles]
    assert [r.to_dict() for r in whole] == [r.to_dict() for r in chunked]


def test_sliding_count_window_is_the_last_size_rows() -> None:
    rng = np.random.default_rng(7)
    profile = _profile(rng.normal(size=(2000, 5)))
    X = _stream(8, 1300)
    reports = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 500, 250))).update(X)
    assert [(r.start, r.end) for r in reports] == [(0, 500), (250, 750), (500, 1000), (750, 1250)]
    for r in reports:
        alone = _one_window(profile, X[int(r.start) : int(r.end)])
        assert [f.to_dict() for f in r.features] == [f.to_dict() for f in alone.features]


def test_time_windows_tumbling_sliding_gaps_and_clock_steps() -> None:
    rng = np.random.default_rng(9)
    profile = _profile(rng.normal(size=(1000, 3)))
    X = rng.normal(size=(10, 3))
    cfg = DriftConfig(window=WindowConfig("time", 60, 20), min_samples=1)
    mon = DriftMonitor(profile, cfg)
    t0 = 1_700_000_000.0  # a multiple of 20 s
    assert mon.update(X, now=t0 + 1) == []
    assert mon.update(X, now=t0 + 19.9) == []
    # Crossing one pane boundary reports the window ending there.
    (r,) = mon.update(X, now=t0 + 20)
    assert (r.window_kind, r.start, r.end, r.n_rows) == ("time", t0 - 40, t0 + 20, 20)
    # A clock stepping back is counted in the open pane, without error.
    assert mon.update(X, now=t0 + 5) == []
    # An empty batch advances time: windows ending at t0+40 and t0+60 both hold data.
    ticks = mon.update(np.empty((0, 3)), now=t0 + 65)
    assert [(x.end, x.n_rows) for x in ticks] == [(t0 + 40, 40), (t0 + 60, 40)]
    # After a long silence the still-populated windows are reported, then nothing.
    later = mon.update(X, now=t0 + 10_000)
    assert [(x.end, x.n_rows) for x in later] == [(t0 + 80, 20)]
    (r,) = mon.update(X, now=np.float64(t0 + 10_021))  # numpy timestamps are fine
    assert (r.start, r.end, r.n_rows) == (t0 + 9960, t0 + 10_020, 10)


def test_tumbling_time_window_and_default_clock() -> None:
    rng = np.random.default_rng(10)
    profile = _profile(rng.normal(size=(500, 2)))
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("time", 3600)))
    assert mon.update(rng.normal(size=(5, 2))) == []  # now=None: wall clock, no window yet
    assert mon.rows_seen == 5
    mon.reset()
    assert mon.rows_seen == 0 and mon.report() is None


def test_memory_does_not_grow_with_the_stream() -> None:
    rng = np.random.default_rng(11)
    profile = _profile(rng.normal(size=(3000, 8)), rng.random(3000))
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 1000, 250)))
    mon.update(rng.normal(size=(64, 8)), rng.random(64))
    before = mon.nbytes
    slots = sum(c.edges.size + 3 for c in profile.columns)
    assert mon._ring.nbytes == (4 + 2) * slots * 8 + 4 * 8  # (panes + 2) x slots x int64
    for _ in range(300):
        mon.update(rng.normal(size=(64, 8)), rng.random(64))
    assert mon.nbytes == before and mon.rows_seen == 301 * 64


def test_report_is_json_ready() -> None:
    rng = np.random.default_rng(12)
    ref = np.column_stack([rng.normal(size=500), np.full(500, np.nan)])
    rep = _one_window(_profile(ref, rng.random(500)), rng.normal(size=(300, 2)))
    d = rep.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["features"][1]["ks_p"] is None
    assert d["output"]["missing_rate"] == 1.0  # no output passed: counted as missing
    assert d["thresholds"] == {
        "correction": "bh",
        "alpha": 0.05,
        "psi": 0.2,
        "missing_rate_delta": 0.1,
        "min_samples": 200,
    }
    assert rep.feature("f0") is rep.features[0]
    with pytest.raises(KeyError, match="nope"):
        rep.feature("nope")


def test_bad_input_raises_clear_errors_and_leaves_the_monitor_usable() -> None:
    rng = np.random.default_rng(13)
    profile = _profile(rng.normal(size=(500, 3)), rng.random(500))
    no_out = _profile(rng.normal(size=(500, 3)))
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 100)))
    mon.update(rng.normal(size=(10, 3)), rng.random(10))
    bad_calls = [
        (lambda: mon.update(rng.normal(size=(4, 2))), r"expected shape \(n_rows, 3\)"),
        (lambda: mon.update([["a", "b", "c"]]), "X: expected numeric"),
        (
            lambda: mon.update(rng.normal(size=(4, 3)), np.zeros(5)),
            r"output: expected shape \(4,\)",
        ),
        (lambda: mon.update(rng.normal(size=(4, 3)), ["x"] * 4), "output: expected numeric"),
        (lambda: DriftMonitor(no_out).update(np.zeros((1, 3)), [1.0]), "no output column"),
        (lambda: DriftMonitor({"kind": "x"}), "profile.kind"),
        (lambda: DriftMonitor("profile"), "expected a ReferenceProfile"),  # type: ignore[arg-type]
        (lambda: DriftMonitor(profile, {"alpha": 0.1}), "expected a DriftConfig"),  # type: ignore[arg-type]
    ]
    for call, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            call()
    time_mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("time", 60)))
    with pytest.raises(ValueError, match="now: expected a finite timestamp"):
        time_mon.update(np.zeros((1, 3)), now=float("nan"))
    assert mon.rows_seen == 10
    (rep,) = mon.update(rng.normal(size=(90, 3)), rng.random(90))
    assert rep.n_rows == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"psi_threshold": -1}, "psi_threshold"),
        ({"psi_eps": 0}, "psi_eps"),
        ({"correction": "holm"}, "correction"),
        ({"ks_method": "fast"}, "ks_method"),
        ({"min_samples": 0}, "min_samples"),
        ({"ks_exact_max_nm": 1.5}, "ks_exact_max_nm"),
        ({"missing_rate_delta": 2.0}, "missing_rate_delta"),
        ({"window": 1000}, "window: expected a WindowConfig"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftConfig(**kwargs)


def test_exact_mode_equals_scipy_on_the_raw_window() -> None:
    rng = np.random.default_rng(14)
    ref = np.column_stack([rng.normal(size=2000), rng.poisson(3, size=2000).astype(float)])
    ref[::50, 0] = np.nan
    profile = _profile(ref, rng.random(2000), exact_sample=5000)  # keeps every value
    cfg = DriftConfig(
        window=WindowConfig("count", 300, 100), ks_mode="exact", ks_exact_max_nm=10**8
    )
    mon = DriftMonitor(profile, cfg)
    X = np.column_stack([rng.normal(0.2, 1, size=900), rng.poisson(3.3, size=900).astype(float)])
    X[::7, 1] = np.nan
    out = rng.random(900)
    reports = [r for i in range(0, 900, 37) for r in mon.update(X[i : i + 37], out[i : i + 37])]
    assert len(reports) == 7
    ref_out = np.asarray(profile.output.sample)  # type: ignore[union-attr]
    for r in reports:
        assert r.ks_mode == "exact"
        rows = slice(int(r.start), int(r.end))
        for got, x, rv in zip(
            [*r.features, r.output], [*X[rows].T, out[rows]], [*ref.T, ref_out], strict=True
        ):
            assert got is not None and got.ks_d_bound == 0.0
            want = stats.ks_2samp(rv[np.isfinite(rv)], x[np.isfinite(x)])
            assert got.ks_d == pytest.approx(float(want.statistic), abs=1e-12)
            assert got.ks_p == pytest.approx(float(want.pvalue), abs=1e-12)


def test_exact_mode_needs_samples_count_windows_and_bounded_memory() -> None:
    rng = np.random.default_rng(15)
    plain = _profile(rng.normal(size=(300, 2)))
    with pytest.raises(ValueError, match='"f0" has no raw sample'):
        DriftMonitor(plain, DriftConfig(ks_mode="exact"))
    with pytest.raises(ValueError, match="needs a count window"):
        DriftConfig(window=WindowConfig("time", 60), ks_mode="exact")
    sampled = _profile(rng.normal(size=(300, 2)), exact_sample=300)
    with pytest.raises(ValueError, match="exceeds 2000000 raw values"):
        DriftMonitor(sampled, DriftConfig(window=WindowConfig("count", 1_500_000), ks_mode="exact"))
    mon = DriftMonitor(sampled, DriftConfig(window=WindowConfig("count", 1000), ks_mode="exact"))
    assert mon.nbytes >= 1000 * 2 * 8  # the raw window is part of the footprint
