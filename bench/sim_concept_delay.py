"""Detection delay and false alarms of the concept-drift detectors on an error stream.

Error stream: each labelled prediction wrong with probability 5.5 %, stepping to 9 % at a
change point. Detectors: HDDM_A() (drift_confidence 0.001) and PageHinkley(mode="up") with
River's defaults (delta 0.005, threshold 50, alpha 1 - 1e-4). For each case, RUNS seeded
streams; "caught" counts detections within FOLLOW outcomes after the change, the delay is
from the change to the first detection after it; "early" counts runs with a detection
before the change. The stationary rows give detections per 100,000 outcomes at 5.5 %.

    .venv/bin/python bench/sim_concept_delay.py [--runs 100]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from edgeloop_agent.drift import HDDM_A, PageHinkley

BEFORE, AFTER, FOLLOW = 0.055, 0.09, 15_000
DETECTORS: dict[str, Callable[[], HDDM_A | PageHinkley]] = {
    "HDDM_A()": HDDM_A,
    "PageHinkley(mode='up')": lambda: PageHinkley(mode="up"),
}


def detections(make: Callable[[], HDDM_A | PageHinkley], stream: np.ndarray) -> list[int]:
    det = make()
    out = []
    for i, e in enumerate(stream.tolist()):
        det.update(e)
        if det.drift_detected:
            out.append(i)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"error rate {BEFORE} -> {AFTER}, {args.runs} runs per case")
    for change in (500, 1000, 5000, 20_000):
        for name, make in DETECTORS.items():
            delays, early = [], 0
            for seed in range(args.runs):
                rng = np.random.default_rng(seed)
                stream = np.concatenate([rng.random(change) < BEFORE, rng.random(FOLLOW) < AFTER])
                hits = detections(make, stream)
                early += any(h < change for h in hits)
                after = [h - change for h in hits if h >= change]
                if after:
                    delays.append(after[0])
            caught = len(delays)
            med = f"{np.median(delays):.0f}" if delays else "-"
            p90 = f"{np.percentile(delays, 90):.0f}" if delays else "-"
            print(
                f"change at {change:>6}  {name:<24} caught {caught:>3}/{args.runs} within "
                f"{FOLLOW}  delay median {med:>5}, 90th pct {p90:>5}  early alarms {early}",
                flush=True,
            )
    for name, make in DETECTORS.items():
        total = 0
        length = 100_000
        for seed in range(max(10, args.runs // 10)):
            rng = np.random.default_rng(10_000 + seed)
            total += len(detections(make, rng.random(length) < BEFORE))
        runs = max(10, args.runs // 10)
        print(f"stationary {BEFORE}: {name:<24} {total / runs:.2f} detections per 100,000")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
