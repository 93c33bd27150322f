"""Cost of counting distinct routing keys on the agent, beside the router's own cost.

Per keyed request the agent routes (``Router.route``: one SHA-256 and a table lookup, the
baseline) and, once per variant per micro-batch, hashes the keys again for the sketch and
folds them in (``Metrics.record_assigned(key_hashes(...))``). Measured on micro-batches of
``--batch`` keys; also the wire size of one interval's sketch and the control node's merge
and estimate.

    .venv/bin/python bench/bench_keysketch.py [--batch 64] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from edgeloop_agent.metrics import Metrics
from edgeloop_agent.router import Router
from edgeloop_agent.wire import keysketch as ks
from edgeloop_agent.wire.allocation import allocate


def per_key_us(fn, batches: list[list[str]]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return (time.perf_counter() - t0) / sum(map(len, batches)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    router = Router(allocate(None, {"a@1": 1, "b@1": 1}, experiment_id="exp-1"))
    batches = [
        [f"sensor-{(r * args.batch + i) % 5000}" for i in range(args.batch)]
        for r in range(args.repeat)
    ]
    metrics = Metrics()

    def route(keys: list[str]) -> None:
        for k in keys:
            router.route(k)

    def sketch(keys: list[str]) -> None:
        metrics.record_assigned("a@1", ks.key_hashes("exp-1", keys), 0)

    for fn in (route, sketch):  # warm up
        per_key_us(fn, batches[:50])
    base = min(per_key_us(route, batches) for _ in range(3))
    cost = min(per_key_us(sketch, batches) for _ in range(3))
    print(f"micro-batch {args.batch} keys, {args.repeat} batches, best of 3")
    print(f"router.route (baseline): {base:.2f} us/key")
    print(f"key sketch (hash + fold): {cost:.2f} us/key = {cost / base:.2f} x the routing")
    # Memory: the sketches of the 32 variants Metrics allows (the worst case), as allocated
    # (tracemalloc sees numpy's buffers; RSS would not, the heap reuses what the loops freed).
    full = Metrics()
    hashes = ks.key_hashes("exp-1", [f"k{i}" for i in range(20_000)])
    full.record_assigned("warm@1", hashes[:10], 0)  # allocator warm-up, not counted
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for v in range(31):
        full.record_assigned(f"v{v}@1", hashes, 0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(
        f"31 more variants with 20,000 keys each: +{(after - before) / 1024:.0f} KiB "
        f"(their registers: {31 * ks.M // 1024} KiB)"
    )
    print("| distinct keys | wire bytes (JSON) | merge 2 sketches | estimate |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(1)
    for n in (300, 10_000, 100_000, 1_000_000):
        reg = ks.empty()
        ks.add_hashes(reg, rng.integers(0, 2**64, size=n, dtype=np.uint64))
        size = len(json.dumps(ks.to_wire(reg)))
        other = reg.copy()
        t0 = time.perf_counter()
        for _ in range(1000):
            ks.merge(other, reg)
        merge_us = (time.perf_counter() - t0) / 1000 * 1e6
        t0 = time.perf_counter()
        for _ in range(100):
            ks.estimate(reg)
        est_us = (time.perf_counter() - t0) / 100 * 1e6
        print(f"| {n:,} | {size:,} | {merge_us:.1f} us | {est_us:.0f} us |")


if __name__ == "__main__":
    main()
