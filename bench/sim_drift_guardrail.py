"""False rollbacks and detection delay of the experiment's drift guardrail, by simulation.

Each experiment runs two real agent drift monitors (champion and challenger, each against
its own reference profile: 5 features + the model's output, profiled on a 2,000-row
holdout), fed 200-row count windows of the same live stream, for WINDOWS windows.
Models: logistic scores of the features with different weights per arm.

Scenarios:
  null          nothing drifts;
  input drift   feature 0 shifts by 1 sd from window 10 on, for both arms (the world
                changed; not the challenger's fault);
  broken        from window 10 on the challenger reads feature 0 three times too large (a
                unit bug in the new version's preprocessing); the champion is fine.

Rules compared:
  old  roll back if any challenger window since the start has dataset-level drift;
  new  evaluate.drift_guardrail: challenger output vs its own reference, windows where the
       champion's output moved too are excused, alpha/(k(k+1)) spending (alpha = 5 %).

    .venv/bin/python bench/sim_drift_guardrail.py [--runs 1000] [--windows 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import ReferenceProfile, build_reference_profile
from edgeloop_control.policies.experiments.evaluate import drift_guardrail
from edgeloop_control.policies.experiments.totals import OutputWindow

FEATURES, WINDOW, CHANGE_AT, ALPHA = 5, 200, 10, 0.05
W_CHAMPION = np.array([1.0, -0.5, 0.8, 0.3, -0.2])
W_CHALLENGER = np.array([1.1, -0.4, 0.9, 0.2, -0.3])


def _score(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(X @ w)))


def profiles(seed: int = 0) -> tuple[ReferenceProfile, ReferenceProfile]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(2000, FEATURES))
    names = [f"f{j}" for j in range(FEATURES)]
    return tuple(  # type: ignore[return-value]
        ReferenceProfile.from_dict(build_reference_profile(X, names, _score(X, w)))
        for w in (W_CHAMPION, W_CHALLENGER)
    )


def run(
    scenario: str,
    windows: int,
    seed: int,
    refs: tuple[ReferenceProfile, ReferenceProfile],
) -> tuple[int | None, int | None]:
    """Window index (1-based) at which each rule first rolls back, or None."""
    rng = np.random.default_rng(seed)
    cfg = DriftConfig(window=WindowConfig("count", WINDOW))
    champion, challenger = DriftMonitor(refs[0], cfg), DriftMonitor(refs[1], cfg)
    seen: list[OutputWindow] = []
    old = new = None
    for k in range(1, windows + 1):
        X = rng.normal(size=(WINDOW, FEATURES))
        changed = k > CHANGE_AT
        if changed and scenario == "input drift":
            X[:, 0] += 1.0
        Xc = X.copy()
        if changed and scenario == "broken":
            Xc[:, 0] *= 3.0
        (ra,) = champion.update(X, _score(X, W_CHAMPION))
        (rb,) = challenger.update(Xc, _score(Xc, W_CHALLENGER))
        if old is None and rb.dataset_drift:
            old = k
        if new is None and rb.output is not None:
            champ_p = ra.output.ks_p if ra.output is not None else None
            seen.append(OutputWindow("d", str(k), rb.output.ks_p, champ_p))
            if not drift_guardrail(seen, ALPHA).passed:
                new = k
        if old is not None and new is not None:
            break
    return old, new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=100)
    args = ap.parse_args()
    refs = profiles()
    t0 = time.perf_counter()
    print(
        f"null: {args.runs} experiments x {args.windows} windows of {WINDOW} rows; drift "
        f"scenarios: {min(args.runs, 200)} x {min(args.windows, 40)}; alpha {ALPHA}"
    )
    for scenario in ("null", "input drift", "broken"):
        # The drift scenarios settle within a few windows of the change: fewer, shorter runs.
        runs = args.runs if scenario == "null" else min(args.runs, 200)
        windows = args.windows if scenario == "null" else min(args.windows, 40)
        results = [run(scenario, windows, seed, refs) for seed in range(runs)]
        for rule, idx in (("old", 0), ("new", 1)):
            at = [r[idx] for r in results if r[idx] is not None]
            line = f"{scenario:<12} {rule}: rolled back {len(at) / runs * 100:5.1f} %"
            if scenario == "null":
                for w in (5, 20, 100):
                    if w <= args.windows:
                        frac = sum(1 for a in at if a <= w) / runs
                        line += f"  (by window {w}: {frac * 100:.1f} %)"
            elif at:
                delay = np.array(at) - CHANGE_AT
                line += (
                    f"  windows after the change: median {np.median(delay):.0f}, "
                    f"90th pct {np.percentile(delay, 90):.0f}"
                    if scenario == "broken" or rule == "old"
                    else ""
                )
            print(line, flush=True)
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
