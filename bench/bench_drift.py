"""Drift monitor cost: ns per feature per row, each beside baselines measured in the same run.

Setup: 32 numeric features + the model output (33 columns), a 20 000-row reference
profile with 200 fine / 10 PSI bins, 2 % NaN in the live stream.

Baselines (same bins, same counts, no windowing or statistics):
  per-row     the straightforward loop: for each row, for each column, np.isnan +
              np.searchsorted + one counter increment;
  per-column  the obvious vectorisation: for each column, one np.searchsorted and one
              np.bincount over the whole batch.

    .venv/bin/python bench/bench_drift.py [--repeats 5] [--rows 20000]

Figures are the best of --repeats runs (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.wire.profile import ReferenceProfile, build_reference_profile

N_FEATURES = 32


def _data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, N_FEATURES)) * rng.uniform(0.5, 3, N_FEATURES)
    X[rng.random(X.shape) < 0.02] = np.nan
    return X, rng.random(rows)


def _best(repeats: int, fn: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


class PerRowBaseline:
    def __init__(self, profile: ReferenceProfile) -> None:
        self.edges = [c.edges for c in profile.columns]
        self.counts = [np.zeros(e.size + 1, np.int64) for e in self.edges]
        self.missing = np.zeros(len(self.edges), np.int64)

    def update(self, X: np.ndarray, out: np.ndarray) -> None:
        for row, o in zip(X, out, strict=True):
            for c, v in enumerate((*row, o)):
                if np.isnan(v):
                    self.missing[c] += 1
                else:
                    self.counts[c][np.searchsorted(self.edges[c], v)] += 1


class PerColumnBaseline(PerRowBaseline):
    def update(self, X: np.ndarray, out: np.ndarray) -> None:
        for c, col in enumerate((*X.T, out)):
            nan = np.isnan(col)
            self.missing[c] += nan.sum()
            idx = np.searchsorted(self.edges[c], col[~nan])
            self.counts[c] += np.bincount(idx, minlength=self.counts[c].size)


def _per_cell_ns(seconds: float, rows: int) -> float:
    return seconds / (rows * N_FEATURES) * 1e9


def bench(repeats: int, rows: int) -> None:
    Xref, out_ref = _data(20_000, 0)
    names = [f"f{j}" for j in range(N_FEATURES)]
    profile = ReferenceProfile.from_dict(build_reference_profile(Xref, names, out_ref))
    X, out = _data(rows, 1)
    no_report = DriftConfig(window=WindowConfig("count", 10**12))

    print(f"drift bench: {N_FEATURES} features + output, 20000-row reference, {rows} live rows")
    print(f"{'update only (no window completes)':36} {'ns/feat/row':>11} "
          f"{'per-row':>9} {'ratio':>7} {'per-col':>9} {'ratio':>7}")  # fmt: skip
    for batch in (1, 16, 64, 256):
        n = rows if batch > 1 else min(rows, 5000)
        n -= n % batch

        def feed(obj: object, n: int = n, batch: int = batch) -> None:
            for i in range(0, n, batch):
                obj.update(X[i : i + batch], out[i : i + batch])  # type: ignore[attr-defined]

        ours = _per_cell_ns(_best(repeats, lambda: feed(DriftMonitor(profile, no_report))), n)
        n_row = min(n, 2000)
        per_row = _per_cell_ns(
            _best(repeats, lambda n_row=n_row: feed(PerRowBaseline(profile), n_row)), n_row
        )
        per_col = _per_cell_ns(_best(repeats, lambda: feed(PerColumnBaseline(profile))), n)
        print(f"{'batch of ' + str(batch) + ' rows':36} {ours:11.0f} {per_row:9.0f} "
              f"{per_row / ours:6.1f}x {per_col:9.0f} {per_col / ours:6.1f}x")  # fmt: skip

    print()
    print(f"{'with reports (batches of 64)':36} {'ns/feat/row':>11} {'ms/report':>10} "
          f"{'update-only':>12} {'ratio':>7}")  # fmt: skip
    n = rows - rows % 1000
    base = _per_cell_ns(
        _best(repeats, lambda: _feed64(DriftMonitor(profile, no_report), X, out, n)), n
    )
    configs = {
        "tumbling 1000 rows": DriftConfig(window=WindowConfig("count", 1000)),
        "sliding 1000 rows / 100": DriftConfig(window=WindowConfig("count", 1000, 100)),
        "sliding 5000 rows / 1000": DriftConfig(window=WindowConfig("count", 5000, 1000)),
    }
    for label, cfg in configs.items():
        count = [0]

        def run(cfg: DriftConfig = cfg, count: list[int] = count) -> None:
            count[0] = _feed64(DriftMonitor(profile, cfg), X, out, n)

        secs = _best(repeats, run)
        total = _per_cell_ns(secs, n)
        per_report = (secs - base * n * N_FEATURES / 1e9) / max(count[0], 1) * 1e3
        print(f"{label:36} {total:11.0f} {per_report:10.2f} {base:12.0f} "
              f"{total / base:6.2f}x")  # fmt: skip

    print()
    print(f"{'report cost by KS p-value path':36} {'ms/report':>10}")
    small_ref = ReferenceProfile.from_dict(
        build_reference_profile(Xref[:1000], names, out_ref[:1000], exact_sample=1000)
    )
    for label, cfg in {
        "asymptotic (n_ref=1000, m=200)": DriftConfig(
            window=WindowConfig("count", 200), ks_method="asymp"
        ),
        "exact two-sample (n_ref=1000, m=200)": DriftConfig(
            window=WindowConfig("count", 200), ks_method="exact"
        ),
        "exact mode, raw window (m=200)": DriftConfig(
            window=WindowConfig("count", 200), ks_mode="exact", ks_method="asymp"
        ),
    }.items():
        mon = DriftMonitor(small_ref, cfg)
        mon.update(X[:199], out[:199])

        def one(mon: DriftMonitor = mon) -> None:
            mon.update(X[199:200], out[199:200])  # completes the window
            mon.update(X[:199], out[:199])

        print(f"{label:36} {_best(repeats, one) * 1e3:10.2f}")

    print()
    for label, cfg in {
        "tumbling 1000": DriftConfig(),
        "sliding 1000/100 (10 panes)": DriftConfig(window=WindowConfig("count", 1000, 100)),
        "time 3600 s / 60 s (60 panes)": DriftConfig(window=WindowConfig("time", 3600, 60)),
    }.items():
        mon = DriftMonitor(profile, cfg)
        mon.update(X[:64], out[:64], now=0.0)
        print(f"memory, {label:28} {mon.nbytes / 1024:8.0f} KiB")


def _feed64(mon: DriftMonitor, X: np.ndarray, out: np.ndarray, n: int) -> int:
    reports = 0
    for i in range(0, n, 64):
        reports += len(mon.update(X[i : i + 64], out[i : i + 64]))
    return reports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="runs per figure; the best is kept")
    ap.add_argument("--rows", type=int, default=20_000, help="live rows per measurement")
    args = ap.parse_args()
    bench(args.repeats, args.rows)


if __name__ == "__main__":
    main()
