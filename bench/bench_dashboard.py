"""How fast the live dashboard's pages are on a big fleet (real uvicorn, real HTTP).

Fills a control database through the daemon's own ingest path (``handle_status`` and
``handle_report``: devices, telemetry, events) for ``--devices`` devices, starts the
dashboard on it and times each page (median of ``--repeat`` requests), beside the
``/healthz`` round trip as the baseline (the cost of HTTP and a database open alone).

    .venv/bin/python bench/bench_dashboard.py --devices 10000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edgeloop_control.fleet.ingest import handle_report, handle_status
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import free_port
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.web.server import HttpServer


def _status(device: str) -> dict[str, Any]:
    return {"device": device, "online": True, "state": "serving", "revision": 1,
            "models": [{"name": "sensor", "version": "v1", "role": "serve", "weight": 100.0,
                        "variant": "sensor@v1"}], "error": None, "ts": time.time()}  # fmt: skip


def _report(device: str, seq: int) -> dict[str, Any]:
    ts = time.time()
    rid = f"{device}:boot:{seq}"
    payload = {"report_id": rid, "device": device, "ts": ts, "revision": 1,
               "variants": {"sensor@v1": {"name": "sensor", "version": "v1", "role": "serve"}},
               "metrics": {"variants": {}}, "drift": [], "concept_drift": {},
               "outbox": {"depth": seq, "dropped": 0},
               "process": {"rss_bytes": 70 * 2**20, "cpu_percent": 2.0}}  # fmt: skip
    return json.loads(json.dumps({"id": rid, "device_id": device, "kind": "report", "ts": ts,
                                  "payload": payload}))  # fmt: skip


def fill(ws: Workspace, devices: int) -> float:
    db = ControlDB(ws.state_db)
    started = time.perf_counter()
    try:
        for i in range(devices):
            device = f"dev-{i:06d}"
            handle_status(db, device, _status(device))
            handle_report(db, _report(device, 1))
            if i % 10 == 0:
                db.add_event("note", f"bench event for {device}", subject=device)
    finally:
        db.close()
    return time.perf_counter() - started


def timed(url: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as resp:
            resp.read()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init(Path(tmp) / "ws", broker="mqtt://127.0.0.1:1")
        fill_s = fill(ws, args.devices)
        server = HttpServer(ws.state_db, f"127.0.0.1:{free_port()}", ws=ws).start()
        base = f"http://{server.listen}"
        try:
            last_page = (args.devices + 199) // 200
            pages = {
                "/healthz (baseline)": "/healthz",
                "/ fleet, page 1 (200 rows)": "/",
                f"/ fleet, page {last_page}": f"/?page={last_page}",
                "/?fragment=1 (live poll)": "/?fragment=1",
                "/devices/dev-000042": "/devices/dev-000042",
                "/events (200 newest)": "/events",
                "/metrics": "/metrics",
            }
            print(f"{args.devices:,} devices filled through the ingest path in {fill_s:.1f} s")
            with urllib.request.urlopen(base + "/devices/dev-000042", timeout=60) as resp:
                assert resp.status == 200 and b"sensor@v1" in resp.read()
            with urllib.request.urlopen(base + "/", timeout=60) as resp:
                assert f"{args.devices:,} devices".encode() in resp.read()
            for label, path in pages.items():
                print(f"{label:32s} {timed(base + path, args.repeat):8.1f} ms (median)")
        finally:
            server.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process (server + filler): {rss:.0f} MB")


if __name__ == "__main__":
    main()
