"""Memory and CPU of the drift monitor with and without categorical and PCA drift.

Same run, same stream, one fresh interpreter per case (imports: what the agent imports,
numpy, onnxruntime, paho and its drift package, no model), so RSS differences are the
monitors' own:

  numeric      the profile of before: 20 numeric features + the model output (baseline);
  +categorical the same plus 3 categorical features (30 categories each, 50 distinct live
               values each, so the "unseen" bucket is used);
  +pca         the same plus the PCA section (reconstruction error as a derived column);
  +both        categorical and PCA together.

Each child feeds ``--windows`` count windows of ``--window`` rows in micro-batches of
``--batch`` rows (what the agent's serving loop hands the monitor), and reports VmRSS after
the first window and at the end (growth = stream-length dependence), VmHWM, the monitor's
own ``nbytes``, and CPU (process time) per window of rows, i.e. update() calls plus the
report. Ratios are against ``numeric`` measured in the same run.

    .venv/bin/python bench/bench_drift_memory.py              # ~1 min
    .venv/bin/python bench/bench_drift_memory.py --windows 1000   # a longer stream
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("numeric", "+categorical", "+pca", "+both")
N_NUM, N_CAT, N_CATS = 20, 3, 30


def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    return 0


def _rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = rng.normal(size=(n, N_NUM // 2))
    X = np.column_stack([base, base + 0.3 * rng.normal(size=base.shape)])
    out = 1 / (1 + np.exp(-X[:, 0]))
    cats = rng.integers(0, N_CATS + 20, size=(n, N_CAT))  # 20 values the profile never saw
    return X, out, cats


def build_profile(case: str, path: Path) -> None:
    from edgeloop_agent.wire.profile import build_reference_profile

    rng = np.random.default_rng(0)
    X, out, cats = _rows(rng, 5000)
    cats = cats % N_CATS
    categorical = None
    if case in ("+categorical", "+both"):
        categorical = {f"c{j}": [f"v{v}" for v in cats[:, j]] for j in range(N_CAT)}
    profile = build_reference_profile(
        X,
        [f"x{i}" for i in range(N_NUM)],
        out,
        categorical=categorical,
        pca_variance=0.9 if case in ("+pca", "+both") else None,
    )
    path.write_text(json.dumps(profile))


def child(path: Path, windows: int, window: int, batch: int) -> None:
    # The agent's own imports first, so RSS is an agent's baseline plus the monitor.
    import onnxruntime  # noqa: F401
    import paho.mqtt.client  # noqa: F401

    from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig

    rss_start = _vm("VmRSS")
    profile = json.loads(path.read_text())
    rng = np.random.default_rng(1)
    X, out, cats = _rows(rng, window)
    labels = np.array([f"v{v}" for v in cats.ravel()], dtype=object).reshape(cats.shape)
    has_cat = bool(profile.get("categorical"))
    mon = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", window)))
    del profile
    rss_built = _vm("VmRSS")
    cpu: list[float] = []
    rss_first = 0
    for w in range(windows):
        t0 = time.process_time()
        for i in range(0, window, batch):
            sl = slice(i, i + batch)
            mon.update(X[sl], out[sl], categories=labels[sl] if has_cat else None)
        cpu.append(time.process_time() - t0)
        if w == 0:
            rss_first = _vm("VmRSS")
    print(
        json.dumps(
            {
                "rss_start_kb": rss_start,
                "rss_built_kb": rss_built,
                "rss_first_kb": rss_first,
                "rss_end_kb": _vm("VmRSS"),
                "hwm_kb": _vm("VmHWM"),
                "nbytes": mon.nbytes,
                "cpu_ms_per_window": 1000 * float(np.median(cpu[1:] or cpu)),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", type=Path)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.windows, args.window, args.batch)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            path = Path(tmp) / f"{case}.json"
            build_profile(case, path)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path), "--windows", str(args.windows),
                 "--window", str(args.window), "--batch", str(args.batch)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[case] = {**json.loads(proc.stdout), "profile_kb": path.stat().st_size / 1024}
    base = results["numeric"]
    print(
        f"{args.windows} windows x {args.window} rows, batches of {args.batch}; "
        f"{N_NUM} numeric features + output, {N_CAT} categorical ({N_CATS} categories)"
    )
    head = (
        "case",
        "RSS MB",
        "vs numeric",
        "growth MB",
        "monitor KB",
        "profile KB",
        "CPU ms/win",
        "x",
    )
    print("{:<13}{:>9}{:>12}{:>11}{:>12}{:>12}{:>12}{:>7}".format(*head))
    for case, r in results.items():
        rss = r["rss_end_kb"] / 1024
        print(
            f"{case:<13}{rss:>9.1f}{rss - base['rss_end_kb'] / 1024:>+12.2f}"
            f"{(r['rss_end_kb'] - r['rss_first_kb']) / 1024:>11.2f}{r['nbytes'] / 1024:>12.1f}"
            f"{r['profile_kb']:>12.1f}{r['cpu_ms_per_window']:>12.2f}"
            f"{r['cpu_ms_per_window'] / base['cpu_ms_per_window']:>7.2f}"
        )


if __name__ == "__main__":
    main()
