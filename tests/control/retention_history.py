"""Weeks of simulated fleet history with timestamps in the past, through the real write path.

Each device sends a telemetry report every ``report_s`` (requests, errors, labelled outcomes,
a latency histogram recorded by the agent's own ``LatencyHistogram``, assignment counts) and,
every ``window_s``, a completed drift window (PSI and adjusted KS p-values per feature, the
output test, a label-free accuracy estimate) plus its concept-drift state. Every report goes
through ``fleet.ingest.handle_report``, as the daemon stores it. Used by the retention tests
and ``bench/bench_retention.py``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import ControlDB

FEATURES = ("temperature", "vibration", "pressure")
VARIANT = "sensor@v1"


@dataclass(frozen=True)
class Sim:
    devices: tuple[str, ...] = ("pump-1", "pump-2", "pump-3")
    report_s: float = 600.0
    window_s: float = 1200.0  # two windows an hour: hours fold several
    seed: int = 7


def reports(sim: Sim, start: float, end: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """(device, report envelope) for every report in [start, end), in time order."""
    rng = random.Random(f"{sim.seed}:{start}")
    per_window = max(1, round(sim.window_s / sim.report_s))
    seq = int(start // sim.report_s)
    t = math.ceil(start / sim.report_s) * sim.report_s
    while t < end:
        seq += 1
        for device in sim.devices:
            yield device, _envelope(device, seq, t, _payload(rng, sim, t, seq % per_window == 0))
        t += sim.report_s


def ingest(db: ControlDB, sim: Sim, start: float, end: float) -> int:
    n = 0
    for device, envelope in reports(sim, start, end):
        assert handle_report(db, envelope, device)
        n += 1
    return n


def _envelope(device: str, seq: int, ts: float, payload: dict[str, Any]) -> dict[str, Any]:
    rid = f"{device}:boot:{seq}"
    doc = {"report_id": rid, "device": device, "ts": ts, **payload}
    return {"id": rid, "device_id": device, "kind": "report", "ts": ts, "payload": doc}


def _payload(rng: random.Random, sim: Sim, t: float, with_window: bool) -> dict[str, Any]:
    requests = rng.randint(0, 400)
    errors = rng.randint(0, max(0, requests // 50))
    labelled = rng.randint(0, requests)
    hist = LatencyHistogram()
    for _ in range(min(requests, 60)):
        hist.record(rng.lognormvariate(-6.5, 0.6))
    metrics: dict[str, Any] = {
        "requests": requests,
        "predictions": requests - errors,
        "errors": {"bad_input": errors} if errors else {},
        "classification": {"n": labelled, "correct": rng.randint(0, labelled)},
        "latency": hist.to_dict() if hist.count else None,
        "assigned": {"keyed": requests // 2, "unkeyed": requests - requests // 2},
    }
    payload: dict[str, Any] = {
        "revision": 1,
        "interval_s": sim.report_s,
        "variants": {VARIANT: {"name": "sensor", "version": "v1", "role": "serve"}},
        "metrics": {"variants": {VARIANT: metrics}},
        "drift": [_window(rng, sim, t)] if with_window else [],
        "concept_drift": {
            VARIANT: {
                "n": labelled,
                "error_rate": rng.random() * 0.1,
                "drift": False,
                "detections": 0,
            }
        },
        "outbox": {"depth": 0, "dropped": 0},
        "process": {"rss_bytes": 70 * 2**20, "cpu_percent": 2.0},
    }
    return json.loads(json.dumps(payload))


def _window(rng: random.Random, sim: Sim, t: float) -> dict[str, Any]:
    features = []
    for name in FEATURES:
        psi = rng.expovariate(1 / 0.08)
        p = min(1.0, rng.random() ** 2)
        drift = psi > 0.2 and p < 0.05
        features.append(
            {"name": name, "psi": psi, "ks_p": p / 3, "ks_p_adjusted": p, "drift": drift,
             "reasons": ["psi", "ks"] if drift else [], "n": 500}
        )  # fmt: skip
    out_psi = rng.expovariate(1 / 0.05)
    estimated = 0.9 - rng.random() * 0.1
    return {
        "variant": VARIANT,
        "version": "v1",
        "window": {"kind": "time", "start": t - sim.window_s, "end": t, "n_rows": 500},
        "enough_data": True,
        "dataset_drift": any(f["drift"] for f in features),
        "features": features,
        "output": {"psi": out_psi, "ks_p": rng.random(), "drift": out_psi > 0.2},
        "multivariate": None,
        "thresholds": {"psi": 0.2, "alpha": 0.05, "min_samples": 100},
        "estimated": {"metric": "accuracy", "value": estimated, "reference": 0.93, "n": 500},
    }
