"""A/A false decisions of the mSPRT under continuous monitoring: the full grid.

p in {0.5, 0.9, 0.97, 0.99, 0.995} x allocations {50/50, 90/10, 10/90, 50/50->90/10} x
{binary, continuous (zero-inflated loss)}, RUNS A/A experiments per cell, a look after every
batch of 200 outcomes, 50 looks, alpha = 5 %. Prints the rate of runs whose always-valid
p-value ever reached alpha, with a 95 % Wilson interval, beside (``--baseline``) the same
cells with the per-arm plug-in variance the test used before (the audit's defect 1).

    .venv/bin/python bench/sim_msprt_aa.py [--runs 1000] [--baseline]

The simulation itself is ``edgeloop_control.stats.simulation.simulate_aa`` (also used by
``tests/control/test_stats_aa_grid.py`` on a smaller grid).
"""

from __future__ import annotations

import argparse
import time
import zlib

from edgeloop_control.stats import BinaryStats, sequential, wilson_interval
from edgeloop_control.stats.simulation import ALLOCATIONS, simulate_aa

RATES = (0.5, 0.9, 0.97, 0.99, 0.995)
ALPHA = 0.05


def _plug_in(champion, challenger) -> float:  # type: ignore[no-untyped-def]
    return champion.variance / champion.n + challenger.variance / challenger.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--looks", type=int, default=50)
    ap.add_argument("--baseline", action="store_true", help="also run the old plug-in variance")
    args = ap.parse_args()
    fixed = sequential.difference_variance
    t0 = time.perf_counter()
    print(f"A/A, {args.runs} runs per cell, {args.looks} looks of 200, alpha = {ALPHA}")
    header = f"{'kind':<11}{'p':>6}  {'allocation':<14}{'false decisions [95% CI]':<28}"
    print(header + ("plug-in variance (before)" if args.baseline else ""))
    worst = 0.0
    for kind in ("binary", "continuous"):
        for p in RATES:
            for allocation in ALLOCATIONS:
                seed = zlib.crc32(f"{kind} {p} {allocation}".encode())
                sequential.difference_variance = fixed
                r = simulate_aa(kind, p, allocation, runs=args.runs, looks=args.looks, seed=seed)
                ci = wilson_interval(BinaryStats(r.runs, r.false_decisions))
                worst = max(worst, r.rate)
                line = (
                    f"{kind:<11}{p:>6}  {allocation:<14}"
                    f"{r.rate * 100:5.1f} % [{ci.lower * 100:.1f}, {ci.upper * 100:.1f}]".ljust(28)
                )
                if args.baseline:
                    sequential.difference_variance = _plug_in
                    b = simulate_aa(
                        kind, p, allocation, runs=args.runs, looks=args.looks, seed=seed
                    )
                    line += f"{b.rate * 100:5.1f} %"
                print(line, flush=True)
    sequential.difference_variance = fixed
    print(f"worst cell {worst * 100:.1f} %; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
