"""A workspace with a week of fleet history, written through the real write paths.

Drift windows come from the agent's own ``DriftMonitor`` over five days (a sensor shift on
day 3) and enter the control database through the daemon's ``handle_report``; device status
through ``handle_status``; two A/B experiments through ``ExperimentManager`` (one stopped,
one still running); two rollouts through ``RolloutManager`` (one completed, one aborted and
rolled back); the registry holds the model with its feature list, including a categorical
feature the agent does not monitor. Used by the report and drift CLI tests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeloop_agent.drift import DriftConfig, DriftMonitor, WindowConfig
from edgeloop_agent.metrics import Metrics
from edgeloop_agent.telemetry import json_safe
from edgeloop_agent.wire.profile import build_reference_profile
from edgeloop_control.demo.sensors import FEATURES, SensorShift, generate
from edgeloop_control.fleet.desired import plan_desired
from edgeloop_control.fleet.ingest import handle_report, handle_status
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.experiments import ExperimentConfig, ExperimentManager
from edgeloop_control.policies.rollout import RolloutConfig, RolloutManager
from edgeloop_control.registry import Registry
from tests.integration.models import sensor_model

DEVICES = ["pump-1", "pump-2", "pump-3"]
# A device id and feature names longer than any column rich would give them at 80 columns.
LONG_DEVICE = "pump-station-north-basin-with-a-deliberately-long-identifier-0042"
LONG_FEATURES = [
    "bearing_temperature_of_the_secondary_impeller_housing_in_degrees_celsius",
    "vibration_rms_mm_s",
]
CATEGORICAL = "pump_model"
# In the model's feature list, but no window ever reports it (not monitored).
UNMONITORED = "site_region"
MODEL_FEATURES = [*FEATURES, CATEGORICAL, UNMONITORED]
DAY = 86400.0
DAYS = 5
SHIFT_DAY = 3


@dataclass
class History:
    ws: Workspace
    t0: float  # start of the first day of drift windows
    shift_at: float
    experiments: list[str]
    rollouts: list[str]
    windows: int  # drift windows stored


def _envelope(device: str, seq: int, ts: float, payload: dict[str, Any]) -> dict[str, Any]:
    rid = f"{device}:boot:{seq}"
    doc = {"report_id": rid, "device": device, "ts": ts, **payload}
    return json.loads(
        json.dumps({"id": rid, "device_id": device, "kind": "report", "ts": ts,
                    "payload": json_safe(doc)})
    )  # fmt: skip


def _drift_reports(
    db: ControlDB, device: str, names: list[str], t0: float, shift_at: float, seed: int
) -> int:
    """Five days of 200-row windows from the agent's DriftMonitor, two reports a day."""
    train = generate(2000, seed=seed)
    X_ref = train[FEATURES[: len(names)]].to_numpy(float)
    profile = build_reference_profile(X_ref, names, None)
    monitor = DriftMonitor(profile, DriftConfig(window=WindowConfig("count", 200)))
    stored = 0
    for half_day in range(DAYS * 2):
        seq = half_day + 1
        ts = t0 + half_day * DAY / 2 + 3600
        shift = SensorShift.replaced_vibration_sensor() if ts >= shift_at else None
        live = generate(400, seed=seed + 100 + half_day, shift=shift)
        docs = []
        for k, report in enumerate(monitor.update(live[FEATURES[: len(names)]].to_numpy(float))):
            doc = report.to_dict()
            if len(names) == len(FEATURES):
                # A categorical feature as a future monitor could report it: PSI, a chi-square
                # p-value, no KS. The report must show it like any other feature.
                doc["features"].append(
                    {"name": CATEGORICAL, "kind": "categorical", "psi": 0.01 + 0.002 * k,
                     "p_value": 0.6, "drift": False, "reasons": []}
                )  # fmt: skip
            doc.update(variant="sensor@v1", version="v1", t_start=ts - 1800 + k, t_end=ts + k)
            docs.append(doc)
        payload = {
            "revision": 1,
            "variants": {"sensor@v1": {"name": "sensor", "version": "v1", "role": "serve"}},
            "metrics": {"variants": {}},
            "drift": docs,
            "concept_drift": {},
            "outbox": {"depth": 3 + seq, "dropped": 0},
            "process": {"rss_bytes": 74 * 2**20, "cpu_percent": 2.5},
        }
        assert handle_report(db, _envelope(device, seq, ts, payload))
        stored += len(docs)
    return stored


def _status(device: str, revision: int, version: str) -> dict[str, Any]:
    return {
        "device": device, "online": True, "state": "serving", "revision": revision,
        "models": [{"name": "sensor", "version": version, "role": "serve", "weight": 100.0,
                    "variant": f"sensor@{version}"}],
        "error": None, "ts": time.time(),
    }  # fmt: skip


def build(root: Path, broker: PrivateBroker) -> History:
    ws = Workspace.init(root / "ws", broker=broker.url)
    registry = Registry.for_workspace(ws)
    for version, algo in (("v1", "logreg"), ("v2", "rf")):
        registry.register(
            "sensor",
            sensor_model(version, algo=algo).data,
            {
                "algorithm": algo,
                "features": MODEL_FEATURES,
                "categorical_features": [CATEGORICAL, UNMONITORED],
            },
        )
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        now = time.time()
        t0 = now - DAYS * DAY - 3 * 3600
        shift_at = t0 + SHIFT_DAY * DAY
        v1 = registry.get("sensor@v1")
        for device in [*DEVICES, LONG_DEVICE]:
            db.set_desired(device, plan_desired(None, [(v1, 100.0)], []))
            handle_status(db, device, _status(device, 1, "v1"))
        windows = sum(
            _drift_reports(db, d, list(FEATURES), t0, shift_at, seed=i)
            for i, d in enumerate(DEVICES)
        )
        windows += _drift_reports(db, LONG_DEVICE, LONG_FEATURES, t0, shift_at, seed=9)

        experiments = []
        manager = ExperimentManager(
            ws, db, client, config=ExperimentConfig(auto_decide=False, min_samples_per_arm=50)
        )
        for keep_running in (False, True):
            exp = manager.start("sensor", "v1", "v2", DEVICES[:2], weight=50)
            experiments.append(exp["id"])
            seq = [len(experiments) * 100]
            for _ in range(4):
                _traffic(db, exp["id"], seq)
                manager.tick(time.time())
            if not keep_running:
                manager.stop(exp["id"], "the test ends it")
                for _ in range(5):
                    manager.tick(time.time())

        rollouts = []
        fast = RolloutConfig(soak_s=0.2, batch_timeout_s=30.0)
        ro = RolloutManager(ws, db, client, config=fast)
        first = ro.start("sensor@v2", devices=[DEVICES[2]], reason="winner of the A/B test")
        rollouts.append(first["id"])
        ro.tick()
        revision = (db.desired(DEVICES[2]) or (0, {}))[0]
        handle_status(db, DEVICES[2], _status(DEVICES[2], revision, "v2"))
        _served(db, DEVICES[2], revision, "sensor@v2", ts=time.time() + 0.3)
        deadline = time.monotonic() + 10
        while ro.status(first["id"])[0]["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            ro.tick()
        second = ro.start("sensor@v1", devices=[DEVICES[2]], reason="back to v1")
        rollouts.append(second["id"])
        ro.tick()
        ro.abort(second["id"], "the test aborts it")
        for _ in range(3):
            ro.tick()
        db.add_event("note", f"history built for {LONG_DEVICE}", subject=LONG_DEVICE)
        return History(ws, t0, shift_at, experiments, rollouts, windows)
    finally:
        client.close()
        db.close()


def _traffic(db: ControlDB, exp_id: str, seq: list[int]) -> None:
    for device in DEVICES[:2]:
        metrics = Metrics()
        for variant, correct in (("sensor@v1", 60), ("sensor@v2", 80)):
            for _ in range(100):
                metrics.record_request(variant, 0.002)
            for i in range(100):
                metrics.record_classification(variant, i < correct)
        seq[0] += 1
        snapshot = metrics.snapshot(reset=True)
        payload = {
            "revision": 2, "experiment": exp_id,
            "variants": {v: {"name": "sensor", "version": v.split("@")[1], "role": "serve"}
                         for v in snapshot["variants"]},
            "metrics": snapshot, "drift": [], "concept_drift": {},
            "outbox": {"depth": 0, "dropped": 0},
            "process": {"rss_bytes": 76 * 2**20, "cpu_percent": 3.0},
        }  # fmt: skip
        handle_report(db, _envelope(device, 10_000 + seq[0], time.time(), payload))


def _served(db: ControlDB, device: str, revision: int, variant: str, *, ts: float) -> None:
    metrics = Metrics()
    for _ in range(50):
        metrics.record_request(variant, 0.001)
    payload = {
        "revision": revision,
        "variants": {variant: {"name": "sensor", "version": variant.split("@")[1],
                               "role": "serve"}},
        "metrics": metrics.snapshot(reset=True), "drift": [], "concept_drift": {},
        "outbox": {"depth": 1, "dropped": 0},
        "process": {"rss_bytes": 80 * 2**20, "cpu_percent": 3.0},
    }  # fmt: skip
    handle_report(db, _envelope(device, 50_000 + revision, ts, payload))
