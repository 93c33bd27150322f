"""How well the agent's label-free performance estimate (CBPE) tracks the realized metrics.

World: x ~ N(mu_w, s_w^2 I) in 3 dimensions, P(y=1 | x) = sigmoid(0.3 + 1.2 x1 - 0.8 x2 +
0.5 x3): a logistic world, so a logistic regression is correctly specified. The model is
fitted on 5,000 rows at mu = 0, s = 1, and calibrated on a 2,000-row holdout by the control
node's own code (training/calibration.py), isotonic and Platt. Then WINDOWS windows of ROWS
rows each under covariate shift: each window draws its own mean (|mu| up to 2) and scale
(0.5 to 2), so the realized accuracy ranges over ~0.7-0.95. Per window the agent's
PerformanceEstimator gives expected accuracy and ROC AUC; realized ones use the labels.

Baseline in the same run: the "oracle" estimate from the true P(y | x) (perfect
calibration), whose error against the realized metric is sampling noise only. The ratio
RMSE(estimate) / RMSE(oracle) says how much the calibration map adds (1.0 = nothing).

Concept shift: the same inputs as at training, but from window CONCEPT_AT on the labels
follow P(y | x) with the x1 coefficient halved and x2's sign flipped. The estimate cannot
see it; HDDM_A on the labelled errors can (delay in rows after the change).

Cost: PerformanceEstimator.update against DriftMonitor.update on the same 64-row batches.

    .venv/bin/python bench/sim_cbpe.py [--windows 250] [--rows 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from edgeloop_agent.drift import HDDM_A, DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.drift.performance import PerformanceEstimator
from edgeloop_agent.wire.calibration import Calibration
from edgeloop_agent.wire.profile import build_reference_profile
from edgeloop_control.training.calibration import fit_calibration

BETA = np.array([1.2, -0.8, 0.5])
B0 = 0.3
CONCEPT_BETA = np.array([0.6, 0.8, 0.5])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def world(rng: np.random.Generator, n: int, mu: np.ndarray, scale: float, beta=BETA):  # type: ignore[no-untyped-def]
    x = rng.normal(0.0, scale, (n, 3)) + mu
    p = sigmoid(B0 + x @ beta)
    y = rng.random(n) < p
    return x, p, y


def realized(proba: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return float(np.mean((proba[:, 1] >= 0.5) == y)), float(roc_auc_score(y, proba[:, 1]))


def covariate(model, cals: dict[str, Calibration], args) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2026)
    window = WindowConfig("count", args.rows)
    ests = {name: PerformanceEstimator(cal, window) for name, cal in cals.items()}
    rows: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in [*cals, "oracle"]}
    real_acc = []
    for _ in range(args.windows):
        mu = rng.uniform(-2.0, 2.0, 3) * rng.random()
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        x, p_true, y = world(rng, args.rows, mu, scale)
        proba = model.predict_proba(x)
        acc, auc = realized(proba, y)
        real_acc.append(acc)
        for name, est in ests.items():
            [e] = est.update(proba)
            rows[name].append((e.accuracy, acc, e.roc_auc or np.nan, auc))
        # Oracle: the same estimator on the true probabilities, ranked by the model's score.
        conf = np.where(proba[:, 1] >= 0.5, p_true, 1 - p_true)
        yy = np.r_[np.ones(args.rows), np.zeros(args.rows)]
        s = proba[:, 1]
        o_auc = roc_auc_score(yy, np.r_[s, s], sample_weight=np.r_[p_true, 1 - p_true])
        rows["oracle"].append((float(conf.mean()), acc, float(o_auc), auc))
    ra = np.array(real_acc)
    print(
        f"covariate shift: {args.windows} windows x {args.rows} rows; realized accuracy "
        f"{ra.min():.3f}-{ra.max():.3f} (mean {ra.mean():.3f})"
    )
    print(
        f"{'estimate':<10} {'acc MAE':>8} {'acc RMSE':>9} {'p95 |err|':>10} {'max':>7} "
        f"{'<=2SE':>6} {'bias':>8} {'RMSE/oracle':>12} | {'AUC MAE':>8} {'AUC RMSE':>9} "
        f"{'max':>7} {'RMSE/oracle':>12}"
    )
    oracle = np.array(rows["oracle"])
    o_acc = np.sqrt(np.mean((oracle[:, 0] - oracle[:, 1]) ** 2))
    o_auc = np.sqrt(np.mean((oracle[:, 2] - oracle[:, 3]) ** 2))
    for name, vals in rows.items():
        v = np.array(vals)
        err, aerr = v[:, 0] - v[:, 1], v[:, 2] - v[:, 3]
        se = np.sqrt(v[:, 1] * (1 - v[:, 1]) / args.rows)
        rmse, armse = np.sqrt(np.mean(err**2)), np.sqrt(np.mean(aerr**2))
        print(
            f"{name:<10} {np.mean(np.abs(err)):8.4f} {rmse:9.4f} "
            f"{np.quantile(np.abs(err), 0.95):10.4f} {np.max(np.abs(err)):7.4f} "
            f"{np.mean(np.abs(err) <= 2 * se):6.1%} {np.mean(err):+8.4f} {rmse / o_acc:12.2f} | "
            f"{np.mean(np.abs(aerr)):8.4f} {armse:9.4f} {np.max(np.abs(aerr)):7.4f} "
            f"{armse / o_auc:12.2f}"
        )


def concept(model, cal: Calibration, args) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    est = PerformanceEstimator(cal, WindowConfig("count", args.rows))
    det = HDDM_A()
    at = args.concept_at
    before, after, real_after, fired = [], [], [], None
    for w in range(at + 20):
        beta = BETA if w < at else CONCEPT_BETA
        x, _, y = world(rng, args.rows, np.zeros(3), 1.0, beta)
        proba = model.predict_proba(x)
        [e] = est.update(proba)
        wrong = (proba[:, 1] >= 0.5) != y
        for i, bad in enumerate(wrong.tolist()):
            det.update(bad)
            if det.drift_detected and w >= at and fired is None:
                fired = (w - at) * args.rows + i
        (before if w < at else after).append(e.accuracy)
        if w >= at:
            real_after.append(1 - wrong.mean())
    print(
        f"concept shift at window {at}: estimated accuracy {np.mean(before):.3f} before, "
        f"{np.mean(after):.3f} after; realized after {np.mean(real_after):.3f}; "
        f"HDDM_A fired {fired} labelled rows after the change"
    )


def cost(cal: Calibration, args) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    x, _, _ = world(rng, 200_000, np.zeros(3), 1.0)
    p = sigmoid(B0 + x @ BETA)
    proba = np.stack([1 - p, p], axis=1)
    window = WindowConfig("count", args.rows)
    profile = build_reference_profile(x[:5000], ["x1", "x2", "x3"], p[:5000])
    monitor = DriftMonitor(profile, DriftConfig(window=window))
    est = PerformanceEstimator(cal, window)
    timings = {}
    for name, fn in (
        ("DriftMonitor.update", lambda a, b: monitor.update(x[a:b], p[a:b])),
        ("PerformanceEstimator.update", lambda a, b: est.update(proba[a:b])),
    ):
        t0 = time.perf_counter()
        for a in range(0, 200_000, 64):
            fn(a, a + 64)
        timings[name] = (time.perf_counter() - t0) / 200_000 * 1e6
    base = timings["DriftMonitor.update"]
    for name, us in timings.items():
        print(f"{name:<28} {us:6.2f} us/row  ({us / base:.2f}x the drift monitor)")
    print(f"estimator memory {est.nbytes:,} bytes; drift monitor {monitor.nbytes:,} bytes")


# Run in a fresh interpreter: the agent's drift monitor on a 1,000-row window fed 100,000
# rows, with or without the estimator beside it; prints the resident set in bytes.
_MEMORY_CHILD = """
import json, sys
import numpy as np
from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.procstats import read_memory
from edgeloop_agent.wire.profile import build_reference_profile
rng = np.random.default_rng(0)
x = rng.normal(size=(100_000, 3)); p = 1 / (1 + np.exp(-x[:, 0]))
proba = np.stack([1 - p, p], axis=1)
window = WindowConfig("count", 1000)
monitor = DriftMonitor(build_reference_profile(x[:5000], ["a", "b", "c"], p[:5000]),
                       DriftConfig(window=window))
est = None
if sys.argv[1] == "with":
    from edgeloop_agent.drift.performance import PerformanceEstimator
    from edgeloop_agent.wire.calibration import Calibration
    est = PerformanceEstimator(Calibration.from_dict(json.loads(sys.argv[2]), 2), window)
for a in range(0, 100_000, 64):
    monitor.update(x[a:a + 64], p[a:a + 64])
    if est is not None:
        est.update(proba[a:a + 64])
print(read_memory()["rss_bytes"])
"""


def memory(section: dict, runs: int = 3) -> None:  # type: ignore[type-arg]
    """Agent-side RSS with and without the estimator, alternating, same run."""
    import json
    import subprocess
    import sys

    rss: dict[str, list[int]] = {"without": [], "with": []}
    for _ in range(runs):
        for mode in rss:
            out = subprocess.run(
                [sys.executable, "-c", _MEMORY_CHILD, mode, json.dumps(section)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            rss[mode].append(int(out.strip()))
    base = min(rss["without"])
    for mode, values in rss.items():
        m = min(values)
        print(f"agent drift path RSS {mode:<7} estimator: {m / 2**20:6.1f} MB ({m / base:.3f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=250)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--concept-at", type=int, default=10)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x, _, y = world(rng, 5000, np.zeros(3), 1.0)
    model = LogisticRegression().fit(x, y)
    xh, _, yh = world(rng, 2000, np.zeros(3), 1.0)
    ph = model.predict_proba(xh)
    cals, sections = {}, {}
    for method in ("isotonic", "sigmoid"):
        section = fit_calibration(ph, yh, [False, True], method)
        assert section is not None
        sections[method] = section
        cals[method] = Calibration.from_dict(section, 2)
    covariate(model, cals, args)
    concept(model, cals["isotonic"], args)
    cost(cals["isotonic"], args)
    memory(sections["isotonic"])
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
