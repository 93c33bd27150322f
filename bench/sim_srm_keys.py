"""A/A simulation of the sample-ratio check on distinct routing keys (HyperLogLog sketches).

Each run draws N distinct keys, assigns each to the challenger with probability w (the
router's bucket) and folds each arm's keys into its own sketch (edgeloop_agent.wire.keysketch,
p = 14). The arms' estimates go to three tests, at the thresholds below:

* "keys" - the product's check: ``sample_ratio_mismatch(unit="keys",
  relative_error=1.04/sqrt(m))``, the Wald statistic allowing each arm's sketch error;
* "naive" - Pearson's chi-square on the same estimates, as if they were exact counts;
* "exact" - Pearson on the true key counts (what a perfect counter would give).

There is no mismatch (A/A), so every flag is a false alarm: the "keys" rate must stay at or
under the threshold within simulation error (binomial standard error shown). The sketch's
measured relative error per arm (sd of estimate / true - 1) is shown beside 1.04/sqrt(m).

Hashes: by default the sketch hash and the bucket are drawn from numpy's PCG64 (the real
system takes them from disjoint bytes of one SHA-256 digest, which makes them independent);
the ``sha256`` rows use the real thing (key strings, the router's bucket_of and key_hashes,
a fresh experiment id per run) to check that model.

    .venv/bin/python bench/sim_srm_keys.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from edgeloop_agent.wire import keysketch as ks
from edgeloop_agent.wire.allocation import BUCKETS, bucket_of
from edgeloop_control.stats.srm import sample_ratio_mismatch

THRESHOLDS = (0.05, 0.01, 0.001)
SIZES = (200, 2_000, 20_000, 200_000)
SHARES = (0.5, 0.1)


def sketch(hashes: np.ndarray) -> float:
    registers = ks.empty()
    ks.add_hashes(registers, hashes)
    return ks.estimate(registers)


def one_run(rng: np.random.Generator, n: int, w: float, real: bool, run: int) -> tuple:
    if real:
        exp = f"aa-{run}"
        keys = [f"sensor-{run}-{i}" for i in range(n)]
        to_b = np.array([bucket_of(exp, k) < w * BUCKETS for k in keys])
        hashes = ks.key_hashes(exp, keys)
    else:
        to_b = rng.random(n) < w
        hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    true = (int((~to_b).sum()), int(to_b.sum()))
    est = (round(sketch(hashes[~to_b])), round(sketch(hashes[to_b])))
    weights = (1 - w, w)
    p_keys = sample_ratio_mismatch(
        est, weights, unit="keys", relative_error=ks.RELATIVE_ERROR
    ).p_value
    p_naive = sample_ratio_mismatch(est, weights).p_value
    p_exact = sample_ratio_mismatch(true, weights).p_value
    rel = [e / t - 1 for e, t in zip(est, true, strict=True) if t]
    return p_keys, p_naive, p_exact, rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--real-runs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=20261202)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"m = {ks.M} registers, stated RSE 1.04/sqrt(m) = {ks.RELATIVE_ERROR:.4%}")
    head = " | ".join(f"keys/naive/exact @{t:g}" for t in THRESHOLDS)
    print(f"| hashes | N keys | w | runs | sketch rel. sd | {head} |")
    print("|---|---|---|---|---|" + "---|" * len(THRESHOLDS))
    cases = [(False, n, w, args.runs) for w in SHARES for n in SIZES]
    cases += [(True, n, w, args.real_runs) for w in SHARES for n in (2_000,)]
    for real, n, w, runs in cases:
        t0 = time.perf_counter()
        ps = np.zeros((runs, 3))
        rels: list[float] = []
        for r in range(runs):
            pk, pn, pe, rel = one_run(rng, n, w, real, r)
            ps[r] = (pk, pn, pe)
            rels += rel
        cells = []
        for t in THRESHOLDS:
            rates = (ps < t).mean(axis=0)
            se = math.sqrt(t * (1 - t) / runs)
            cells.append("/".join(f"{x:.2%}" for x in rates) + f" (se {se:.2%})")
        print(
            f"| {'sha256' if real else 'pcg64'} | {n:,} | {w:g} | {runs} | "
            f"{np.std(rels):.3%} | " + " | ".join(cells) + f" |  {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
