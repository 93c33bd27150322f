"""``edgeloop report`` on a week of a fleet: collect, render, file size, memory.

Stores drift windows (every feature with PSI and KS p, the agent's layout) for D devices
through the daemon's ``handle_report``, then times ``collect_report`` and ``render_report``
on the whole span and on the last day, and prints the page size and the peak resident set.

    .venv/bin/python bench/bench_report.py            # 3 devices, 7 days, a window per 30 min
    .venv/bin/python bench/bench_report.py --quick    # 2 devices, 2 days
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report import render_report
from edgeloop_control.report.collect import collect_report
from edgeloop_control.report.history import Selection

FEATURES = [f"feature_{i}" for i in range(8)]


def store(db: ControlDB, devices: int, days: int, every_s: float, now: float) -> int:
    rng = np.random.default_rng(0)
    n = 0
    for d in range(devices):
        device = f"pump-{d + 1}"
        for k, end in enumerate(np.arange(now - days * 86400, now, every_s)):
            psi = rng.gamma(2.0, 0.02, len(FEATURES))
            window = {
                "window": {"kind": "count", "start": 0, "end": 500, "n_rows": 500},
                "enough_data": True, "dataset_drift": bool(psi.max() > 0.2),
                "variant": "sensor@v1", "version": "v1", "t_end": float(end),
                "features": [{"name": f, "psi": float(p), "ks_p": 0.5, "ks_p_adjusted": 0.6,
                              "drift": bool(p > 0.2), "reasons": ["psi"] if p > 0.2 else []}
                             for f, p in zip(FEATURES, psi, strict=True)],
                "output": {"name": "__output__", "psi": float(rng.gamma(2.0, 0.02))},
                "thresholds": {"psi": 0.2, "alpha": 0.05},
            }  # fmt: skip
            rid = f"{device}:b:{k}"
            env = {"id": rid, "payload": {"report_id": rid, "device": device, "ts": float(end),
                                          "drift": [window]}}  # fmt: skip
            handle_report(db, json.loads(json.dumps(env)))
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    devices, days = (2, 2) if args.quick else (3, 7)
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws")
        db = ControlDB(ws.state_db)
        t = time.perf_counter()
        n = store(db, devices, days, 1800.0, now)
        print(f"stored {n} windows ({devices} devices x {days} days, one per 30 min) "
              f"in {time.perf_counter() - t:.1f} s")  # fmt: skip
        for label, sel in (("whole span", Selection()), ("last day", Selection(since=now - 86400))):
            t0 = time.perf_counter()
            data = collect_report(ws, db, sel)
            t1 = time.perf_counter()
            page = render_report(data)
            t2 = time.perf_counter()
            print(f"{label:>10}: {len(data['drift']['windows']):5d} windows, collect "
                  f"{(t1 - t0) * 1000:6.0f} ms, render {(t2 - t1) * 1000:6.0f} ms, "
                  f"page {len(page.encode()) / 1e6:.2f} MB")  # fmt: skip
        db.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
