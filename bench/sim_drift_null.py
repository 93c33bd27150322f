"""False alarms of the drift monitor under no drift, by reference size.

Two figures, both with 10 PSI bins and 200-row live windows:

1. Dataset level, the real monitor: RUNS independent (reference, window) pairs with 20
   standard-normal features and no drift; the rate of windows with ``dataset_drift``, and
   how many were flagged by PSI and by KS. Reference sizes 100 ... 5,000.
2. Per feature, P(PSI >= 0.2) for a 1,000-row reference and a 200-row window, the figure
   docs/drift.md quotes, by direct vectorised simulation of the same bins (quantile bins of
   the reference, 100 rows each, live counts on (e[i-1], e[i]], proportions floored at 1e-4)
   beside the chi-square approximation (1/n + 1/m) chi2(9).

    .venv/bin/python bench/sim_drift_null.py [--runs 400] [--psi-draws 400000]
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np
from scipy import stats

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import SmallReferenceWarning, build_reference_profile
from edgeloop_control.stats import BinaryStats, wilson_interval

FEATURES, WINDOW = 20, 200


def dataset_level(n_ref: int, runs: int, seed: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(seed)
    names = [f"f{j}" for j in range(FEATURES)]
    flagged = by_psi = by_ks = 0
    for _ in range(runs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallReferenceWarning)
            profile = build_reference_profile(rng.normal(size=(n_ref, FEATURES)), names, None)
        monitor = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", WINDOW)))
        (report,) = monitor.update(rng.normal(size=(WINDOW, FEATURES)))
        flagged += report.dataset_drift
        by_psi += any("psi" in f.reasons for f in report.features)
        by_ks += any("ks" in f.reasons for f in report.features)
    return flagged, by_psi, by_ks


def psi_tail(n_ref: int, m: int, draws: int, seed: int, chunk: int = 20_000) -> dict[str, Any]:
    """P(PSI >= 0.2) and the calibration of two p-values for the same bins, by simulation."""
    rng = np.random.default_rng(seed)
    bins = 10
    idx = np.arange(1, bins) * n_ref // bins - 1  # inverted_cdf order statistics
    psi_all, p_psi, p_pearson = [], [], []
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        edges = np.sort(rng.normal(size=(k, n_ref)), axis=1)[:, idx]
        live = rng.normal(size=(k, m))
        cum = (live[:, :, None] <= edges[:, None, :]).sum(axis=1)  # bins are (e[i-1], e[i]]
        counts = np.diff(np.concatenate([np.zeros((k, 1)), cum, np.full((k, 1), m)], axis=1))
        a = np.maximum(counts / m, 1e-4)
        e = 1.0 / bins
        psi = ((a - e) * np.log(a / e)).sum(axis=1)
        psi_all.append(psi)
        p_psi.append(stats.chi2.sf(psi / (1 / n_ref + 1 / m), bins - 1))
        ref = np.full(bins, n_ref / bins)
        share = (ref + counts) / (n_ref + m)
        x2 = ((ref - share * n_ref) ** 2 / (share * n_ref)).sum(axis=1) + (
            (counts - share * m) ** 2 / (share * m)
        ).sum(axis=1)
        p_pearson.append(stats.chi2.sf(x2, bins - 1))
    out: dict[str, Any] = {"psi_ge_0.2": float((np.concatenate(psi_all) >= 0.2).mean())}
    pp, px = np.concatenate(p_psi), np.concatenate(p_pearson)
    out["calibration"] = [
        (q, float((pp <= q).mean() / q), float((px <= q).mean() / q))
        for q in (0.05, 0.01, 1e-3, 1e-4)
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--psi-draws", type=int, default=400_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(
        f"1. dataset level: {FEATURES} features, {WINDOW}-row windows, {args.runs} runs, alpha 5 %"
    )
    print(f"{'n_ref':>6}  {'flagged [95% CI]':<22}{'by PSI':>8}{'by KS':>8}")
    for n_ref in (100, 150, 200, 500, 1000, 5000):
        flagged, by_psi, by_ks = dataset_level(n_ref, args.runs, seed=n_ref)
        ci = wilson_interval(BinaryStats(args.runs, flagged))
        rate = f"{flagged / args.runs * 100:.1f} % [{ci.lower * 100:.1f}, {ci.upper * 100:.1f}]"
        print(f"{n_ref:>6}  {rate:<22}{by_psi:>8}{by_ks:>8}", flush=True)
    for n_ref in (200, 1000):
        print(f"2. per feature, n_ref {n_ref}, m 200, {args.psi_draws} draws of the same bins")
        r = psi_tail(n_ref, 200, args.psi_draws, seed=n_ref)
        approx = float(stats.chi2.sf(0.2 / (1 / n_ref + 1 / 200), 9))
        print(
            f"   P(PSI >= 0.2): simulated {r['psi_ge_0.2']:.2e}, chi-square approximation "
            f"{approx:.2e}"
        )
        print("   P(p <= q) / q    PSI as (1/n+1/m) chi2(9)    Pearson chi2 on the PSI bins")
        for q, a, b in r["calibration"]:
            print(f"   q = {q:<8g}   {a:>10.2f}                 {b:>10.2f}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
