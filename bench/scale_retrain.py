"""Scale measurement: drift-triggered retraining when 10 % of N devices drift at once.

A fresh workspace with ``sensor@v1`` as champion and ``[retrain]`` on (fleet scope,
3 consecutive windows); a private Mosquitto; ``edgeloop serve``; ``edgeloop deploy`` to
every device; ``bench/fleetsim.py`` devices of which ``--drift-share`` start drifting
``--drift-onset`` seconds in. Counted from the daemon's events: how many drift episodes
were opened (the policy should open one for the fleet, not one per device), when, and what
the episode did next (waiting for labels, retraining, failure).

    .venv/bin/python bench/scale_retrain.py --devices 1000 --duration 150
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fleetsim import SimConfig, raise_fd_limit, run_fleet  # noqa: E402
from bench.scale_ingest import deploy_all, proc_cpu_rss, start_daemon  # noqa: E402

from edgeloop_control.infra.db import ControlDB  # noqa: E402
from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.infra.workspace import Workspace  # noqa: E402
from edgeloop_control.registry import Registry  # noqa: E402

RETRAIN = """
[retrain]
enabled = true
consecutive_windows = 3
min_samples = 400
cooldown_s = 600
scope = "fleet"
"""


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.integration.models import sensor_model

    n = args.devices
    ws = Workspace.init(work / "ws")
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write(RETRAIN)
    registry = Registry.for_workspace(ws)
    model = sensor_model("v1")
    # The champion's recipe is what a retraining repeats: algorithm and features.
    registry.register(
        "sensor", model.data, {"algorithm": "logreg", "features": list(model.features)}
    )
    registry.promote("sensor", "v1", "champion")
    ws = Workspace.open(ws.root)
    broker = PrivateBroker(work / "broker").start()
    daemon = start_daemon(ws, broker.url, work / "control.log")
    result: dict[str, Any] = {"devices": n, "drift_share": args.drift_share}
    try:
        devices = [f"sim-{i:05d}" for i in range(n)]
        deploy_all(ws, broker.url, devices, "sensor@v1")
        cfg = SimConfig(
            broker=broker.url,
            telemetry_interval_s=args.interval,
            request_rate=args.request_rate,
            capture_rate=args.capture_rate,
            label_rate=1.0,
            drift_share=args.drift_share,
            drift_onset_s=args.drift_onset,
            drift_window_rows=args.drift_window_rows,
            trusted_keys=(str(ws.public_key_path),),
        )
        d_cpu0, _ = proc_cpu_rss(daemon.pid)
        t0 = time.time()
        sims = run_fleet(cfg, n, args.procs, args.duration)
        time.sleep(5)
        d_cpu1, d_rss1 = proc_cpu_rss(daemon.pid)
        db = ControlDB(ws.state_db)
        try:
            events = [e for e in db.events(limit=100000) if e["kind"] not in ("device", "deploy")]
            drifting = db.conn.execute(
                "SELECT count(DISTINCT device) FROM drift_windows WHERE dataset_drift = 1"
            ).fetchone()[0]
        finally:
            db.close()
        kinds = collections.Counter(e["kind"] for e in events)
        first = {}
        for e in events:
            first.setdefault(e["kind"], round(e["ts"] - t0, 1))
        result.update(
            devices_reporting_drift=drifting,
            drift_onset_s=args.drift_onset,
            events_by_kind=dict(kinds),
            first_event_at_s=first,
            messages=[e["message"][:200] for e in events if e["kind"] != "device_error"][:12],
            daemon_cpu_s=round(d_cpu1 - d_cpu0, 1),
            daemon_rss_mb=round(d_rss1, 1),
            samples_sent=sum(s["samples"] for s in sims),
            labels_sent=sum(s["labels"] for s in sims),
        )
    finally:
        daemon.terminate()
        daemon.wait(60)
        broker.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=150.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--request-rate", type=float, default=5.0)
    ap.add_argument("--capture-rate", type=float, default=0.05)
    ap.add_argument("--drift-share", type=float, default=0.1)
    ap.add_argument("--drift-onset", type=float, default=30.0)
    ap.add_argument("--drift-window-rows", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    raise_fd_limit(args.devices + 1024)
    with tempfile.TemporaryDirectory(prefix="retrain-") as tmp:
        result = measure(args, Path(tmp))
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
