"""Label-free performance estimation (CBPE) against reference computations on the same
numbers: calibration maps against scikit-learn's fits, expected accuracy against numpy,
expected ROC AUC against ``sklearn.metrics.roc_auc_score`` on the weighted sample; windows
against the drift monitor's; the estimate against realized metrics under covariate shift,
and its blindness to concept shift (which the label-based detector sees)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from edgeloop_agent.drift import HDDM_A, DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.drift.performance import PerformanceEstimator
from edgeloop_agent.wire.calibration import (
    Calibration,
    CalibrationError,
    auc_tie_bound,
    auc_weights,
    confidence,
    estimate,
    expected_auc,
)
from edgeloop_agent.wire.profile import build_reference_profile


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _isotonic_binary(
    p: np.ndarray, y: np.ndarray, edges: int = 64
) -> tuple[Calibration, IsotonicRegression]:
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    assert iso.X_thresholds_.size <= 256
    cuts = np.unique(np.quantile(p, np.linspace(0, 1, edges + 2)[1:-1])).tolist()
    cal = Calibration.from_dict(
        {
            "version": 1,
            "method": "isotonic",
            "binary": True,
            "maps": [{"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}],
            "auc_edges": cuts,
            "reference": {"accuracy": 0.8},
        },
        2,
    )
    return cal, iso


def _fitted(n: int, seed: int) -> tuple[Calibration, IsotonicRegression]:
    proba, y = _binary_data(n, seed)
    return _isotonic_binary(proba[:, 1], y)


def _binary_data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A deliberately miscalibrated binary model: raw p = sigmoid(2 z), truth sigmoid(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(shift, 1.5, n)
    y = (rng.random(n) < _sigmoid(z)).astype(float)
    raw = _sigmoid(2.0 * z)
    return np.stack([1 - raw, raw], axis=1), y


def test_isotonic_map_equals_sklearn_and_accuracy_and_auc_equal_the_references() -> None:
    proba, y = _binary_data(4000, seed=1)
    cal, iso = _isotonic_binary(proba[:, 1], y)
    live, _ = _binary_data(3000, seed=2)
    c = cal.calibrate(live)
    np.testing.assert_allclose(c[:, 1], iso.predict(live[:, 1]), atol=1e-12)
    np.testing.assert_allclose(c.sum(axis=1), 1.0)

    pred = np.argmax(live, axis=1)
    want_acc = np.mean(np.where(pred == 1, c[:, 1], c[:, 0]))
    got = estimate(cal, live)
    assert got["accuracy"] == pytest.approx(want_acc, abs=1e-12)

    # Expected AUC = roc_auc_score of the sample where each row is a positive with weight c
    # and a negative with weight 1 - c, ranked by its raw-score bin.
    bins = cal.auc_bins(live[:, 1])
    yy = np.r_[np.ones(len(live)), np.zeros(len(live))]
    ref_binned = roc_auc_score(yy, np.r_[bins, bins], sample_weight=np.r_[c[:, 1], c[:, 0]])
    assert got["roc_auc"] == pytest.approx(ref_binned, abs=1e-12)
    # ... and within the stated binning bound of the same on the unbinned raw score.
    raw = live[:, 1]
    ref_exact = roc_auc_score(yy, np.r_[raw, raw], sample_weight=np.r_[c[:, 1], c[:, 0]])
    pos, neg = auc_weights(cal, c, live)
    bound = auc_tie_bound(pos, neg)
    assert abs(got["roc_auc"] - ref_exact) <= bound
    assert bound < 0.02


def test_sigmoid_map_equals_platt_by_sklearn() -> None:
    proba, y = _binary_data(3000, seed=3)
    z = np.log(proba[:, 1] / proba[:, 0]).reshape(-1, 1)
    fit = LogisticRegression(C=1e6).fit(z, y)
    cal = Calibration.from_dict(
        {
            "version": 1,
            "method": "sigmoid",
            "binary": True,
            "maps": [{"a": float(fit.coef_[0, 0]), "b": float(fit.intercept_[0])}],
        },
        2,
    )
    np.testing.assert_allclose(cal.calibrate(proba)[:, 1], fit.predict_proba(z)[:, 1], atol=1e-9)
    # The data's true map is sigmoid(z/2) of the raw logit z: Platt recovers a close to 0.5.
    assert fit.coef_[0, 0] == pytest.approx(0.5, abs=0.08)


def test_multiclass_accuracy_is_the_mean_renormalised_confidence_of_the_predicted_class() -> None:
    rng = np.random.default_rng(4)
    n, k = 3000, 3
    logits = rng.normal(0, 1.5, (n, k))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in truth])
    raw = np.exp(1.7 * logits) / np.exp(1.7 * logits).sum(axis=1, keepdims=True)
    isos = [IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(raw[:, j], y == j)
            for j in range(k)]  # fmt: skip
    cal = Calibration.from_dict(
        {
            "version": 1,
            "method": "isotonic",
            "binary": False,
            "maps": [{"x": i.X_thresholds_.tolist(), "y": i.y_thresholds_.tolist()} for i in isos],
        },
        k,
    )
    ovr = np.stack([isos[j].predict(raw[:, j]) for j in range(k)], axis=1)
    ref = ovr / ovr.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(cal.calibrate(raw), ref, atol=1e-12)
    want = ref[np.arange(n), raw.argmax(axis=1)].mean()
    assert estimate(cal, raw)["accuracy"] == pytest.approx(want, abs=1e-12)
    assert "roc_auc" not in estimate(cal, raw)
    # On its own fitting data the calibrated estimate equals the realized accuracy closely.
    assert want == pytest.approx(np.mean(raw.argmax(axis=1) == y), abs=0.02)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"version": 2}, "version"),
        ({"method": "beta"}, "method"),
        ({"binary": "yes"}, "binary"),
        ({"maps": []}, "maps"),
        ({"maps": [{"x": [0.0, 1.0], "y": [0.9, 0.1]}]}, "non-decreasing"),
        ({"maps": [{"x": [0.0] * 300, "y": [0.0] * 300}]}, "at most 256"),
        ({"maps": [{"x": [0.0, float("nan")], "y": [0.0, 1.0]}]}, "finite"),
        ({"auc_edges": [0.5, 0.4]}, "increasing"),
        ({"reference": {"accuracy": "high"}}, "reference"),
    ],
)
def test_a_bad_calibration_section_is_refused_with_the_field_named(bad: dict, needle: str) -> None:
    good = {
        "version": 1,
        "method": "isotonic",
        "binary": True,
        "maps": [{"x": [0.0, 1.0], "y": [0.1, 0.9]}],
        "auc_edges": [0.5],
        "reference": {},
    }
    with pytest.raises(CalibrationError, match=needle):
        Calibration.from_dict({**good, **bad}, 2)


def _rows_and_proba(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    proba, _ = _binary_data(n, seed)
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)), proba


@pytest.mark.parametrize("window", [WindowConfig("count", 500), WindowConfig("count", 600, 200)])
def test_count_windows_match_the_drift_monitor_and_a_whole_window_computation(
    window: WindowConfig,
) -> None:
    cal, _ = _fitted(3000, 5)
    X, proba = _rows_and_proba(2300, seed=6)
    profile = build_reference_profile(X[:1000], ["a", "b"], None)
    monitor = DriftMonitor(profile, DriftConfig(window=window, min_samples=50))
    est = PerformanceEstimator(cal, window)
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.choice(np.arange(1, 2300), 40, replace=False))
    reports, estimates = [], []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, 2300], strict=True):
        reports += monitor.update(X[a:b])
        estimates += est.update(proba[a:b])
    assert [(r.start, r.end) for r in reports] == [(e.start, e.end) for e in estimates]
    assert len(estimates) == (2300 - int(window.size)) // int(window.pane_size) + 1
    for e in estimates:
        rows = proba[int(e.start) : int(e.end)]
        whole = estimate(cal, rows)
        assert e.n == rows.shape[0]
        assert e.accuracy == pytest.approx(whole["accuracy"], abs=1e-12)
        assert e.roc_auc == pytest.approx(whole["roc_auc"], abs=1e-12)
    assert est.get() is estimates[-1]
    assert est.nbytes <= (window.n_panes + 1) * (2 + 2 * cal.n_auc_bins) * 8


def test_time_windows_match_the_drift_monitor_across_gaps() -> None:
    cal, _ = _fitted(3000, 8)
    window = WindowConfig("time", 60, 20)
    X, proba = _rows_and_proba(900, seed=9)
    profile = build_reference_profile(X[:500], ["a", "b"], None)
    monitor = DriftMonitor(profile, DriftConfig(window=window, min_samples=10))
    est = PerformanceEstimator(cal, window)
    reports, estimates = [], []
    t = 1_000_000.0
    for i in range(0, 900, 30):
        t += 7.0 if i != 450 else 400.0  # a long silence: windows empty out, then resume
        reports += monitor.update(X[i : i + 30], now=t)
        estimates += est.update(proba[i : i + 30], now=t)
    reports += monitor.update(np.empty((0, 2)), now=t + 200)
    estimates += est.update(np.empty((0, 2)), now=t + 200)
    assert len(estimates) > 10
    assert [(r.start, r.end, r.n_rows) for r in reports] == [
        (e.start, e.end, e.n) for e in estimates
    ]


def test_bad_input_is_refused_without_touching_the_state() -> None:
    cal, _ = _fitted(2000, 10)
    est = PerformanceEstimator(cal, WindowConfig("count", 100))
    with pytest.raises(ValueError, match="shape"):
        est.update(np.ones(5))
    with pytest.raises(ValueError, match="2 columns"):
        est.update(np.ones((5, 3)))
    assert est.update(_binary_data(100, seed=11)[0])[0].n == 100


def _logistic_world(n: int, shift: float, rng: np.random.Generator, beta: np.ndarray):  # type: ignore[no-untyped-def]
    x = rng.normal(0.0, 1.0, (n, 2)) + np.array([shift, -0.5 * shift])
    p = _sigmoid(x @ beta[1:] + beta[0])
    return x, p


def _platt(p: np.ndarray, y: np.ndarray, edges: int = 255) -> Calibration:
    z = np.log(p / (1 - p)).reshape(-1, 1)
    fit = LogisticRegression(C=1e6).fit(z, y)
    cuts = np.unique(np.quantile(p, np.linspace(0, 1, edges + 2)[1:-1])).tolist()
    return Calibration.from_dict(
        {
            "version": 1,
            "method": "sigmoid",
            "binary": True,
            "maps": [{"a": float(fit.coef_[0, 0]), "b": float(fit.intercept_[0])}],
            "auc_edges": cuts,
        },
        2,
    )


def _hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an empirical AUC (Hanley & McNeil, 1982, Radiology 143:29)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    return math.sqrt(var / (n_pos * n_neg))


def test_under_covariate_shift_the_estimate_tracks_the_realized_metrics() -> None:
    """A correctly specified model (the true P(y|x) is logistic and the model is that
    logistic curve, Platt-calibrated on a holdout) under a covariate shift that moves
    accuracy a lot: per window of 1,000 the estimate stays within 4 standard errors of the
    realized accuracy and AUC (bench/sim_cbpe.py measures the error over 200+ windows, for
    isotonic maps too; docs/drift.md)."""
    rng = np.random.default_rng(12)
    beta = np.array([0.2, 1.5, -1.0])
    _, p = _logistic_world(5000, 0.0, rng, beta)
    y = (rng.random(p.size) < p).astype(float)
    cal = _platt(p, y)
    est = PerformanceEstimator(cal, WindowConfig("count", 1000))
    realized_acc, got = [], []
    for shift in np.linspace(0.0, 2.5, 30):
        _, p = _logistic_world(1000, float(shift), rng, beta)
        y = rng.random(p.size) < p
        [e] = est.update(np.stack([1 - p, p], axis=1))
        got.append(e)
        realized_acc.append(np.mean((p >= 0.5) == y))
        real_auc = roc_auc_score(y, p)
        se_auc = _hanley_mcneil_se(real_auc, int(y.sum()), int((~y).sum()))
        assert abs(e.roc_auc - real_auc) <= 4 * se_auc + e.auc_tie_bound
    acc = np.array([e.accuracy for e in got])
    se = np.sqrt(acc * (1 - acc) / 1000)
    assert np.all(np.abs(acc - np.array(realized_acc)) <= 4 * se)
    # The shift moved the truth (accuracy rises as rows leave the boundary) and the
    # estimate followed it.
    assert realized_acc[-1] - realized_acc[0] > 0.05
    assert np.corrcoef(acc, realized_acc)[0, 1] > 0.8


def test_under_concept_shift_the_estimate_cannot_see_it_but_the_label_detector_does() -> None:
    """Same inputs, same model, but P(y|x) changes (the label flips on a third of the
    rows): the realized accuracy drops by ~0.2, the estimate, which sees only inputs and
    the model's probabilities, stays where it was; HDDM_A on the labelled errors fires."""
    rng = np.random.default_rng(13)
    beta = np.array([0.0, 2.0, -1.0])
    _, p = _logistic_world(20_000, 0.0, rng, beta)
    y = (rng.random(p.size) < p).astype(float)
    cal, _ = _isotonic_binary(p, y)
    est = PerformanceEstimator(cal, WindowConfig("count", 2000))
    detector = HDDM_A()
    before_est, after_est, after_real, fired_at = [], [], [], None
    for w in range(10):
        _, p = _logistic_world(2000, 0.0, rng, beta)
        y = rng.random(p.size) < p
        if w >= 5:
            flip = rng.random(p.size) < 1 / 3
            y = np.where(flip, ~y, y)
        [e] = est.update(np.stack([1 - p, p], axis=1))
        wrong = (p >= 0.5) != y
        for i, bad in enumerate(wrong.tolist()):
            detector.update(bad)
            if detector.drift_detected and fired_at is None and w >= 5:
                fired_at = (w - 5) * 2000 + i
        (before_est if w < 5 else after_est).append(e.accuracy)
        if w >= 5:
            after_real.append(1 - wrong.mean())
    assert abs(np.mean(after_est) - np.mean(before_est)) < 0.01
    assert np.mean(before_est) - np.mean(after_real) > 0.15
    assert fired_at is not None and fired_at < 2000


def test_expected_auc_of_degenerate_windows_is_undefined() -> None:
    assert math.isnan(expected_auc(np.zeros(3), np.ones(3)))
    assert math.isnan(auc_tie_bound(np.ones(3), np.zeros(3)))
    c = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert confidence(c, np.array([[0.1, 0.9], [0.7, 0.3]])).tolist() == [0.8, 0.6]
