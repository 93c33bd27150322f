"""Gather what the demo's HTML report shows from the control database."""

from __future__ import annotations

import json
import time
from typing import Any

from edgeloop_control.controldb import ControlDB, merged_p99_ms
from edgeloop_control.demo.fleetsim import DemoClient
from edgeloop_control.demo.narrate import Narrator
from edgeloop_control.demo.sensors import FEATURES
from edgeloop_control.workspace import Workspace


def collect_report_data(
    ws: Workspace,
    db: ControlDB,
    *,
    say: Narrator,
    shift_at: float | None,
    client: DemoClient,
    devices: list[str],
) -> dict[str, Any]:
    start = say.started_wall
    return {
        "title": "edgeloop demo: a pump fleet notices a sensor change and heals itself",
        "generated_at": time.time(),
        "workspace": str(ws.root),
        "timeline": [
            {"t": t, "duration_s": d, "step": title, "detail": ""} for title, t, d in say.history
        ],
        "events": [
            {"t": e["ts"], "kind": e["kind"], "subject": e["subject"], "message": e["message"]}
            for e in db.events(limit=5000)
            if e["ts"] >= start
        ],
        "drift": _drift(db, shift_at),
        "experiment": _experiment(ws, db),
        "rollout": _rollout(ws, db),
        "devices": _devices(db, client, devices),
        "summary": {
            "duration_s": round(time.time() - start, 1),
            "requests": sum(s.sent for s in client.stats.values()),
            "errors": sum(s.errors for s in client.stats.values()),
            "devices": len(devices),
        },
    }


def _drift(db: ControlDB, shift_at: float | None) -> dict[str, Any]:
    rows = db.conn.execute(
        "SELECT device, variant, end, n, dataset_drift, doc FROM drift_windows ORDER BY end"
    ).fetchall()
    windows = []
    for r in rows:
        doc = json.loads(r["doc"])
        feats = {f["name"]: f for f in doc.get("features") or []}
        output = doc.get("output") or {}
        windows.append(
            {
                "t": r["end"],
                "device": r["device"],
                "variant": r["variant"],
                "n": r["n"],
                "dataset_drift": bool(r["dataset_drift"]),
                "psi": {k: v.get("psi") for k, v in feats.items()},
                "ks_p": {k: v.get("ks_p_adjusted", v.get("ks_p")) for k, v in feats.items()},
                "output_psi": output.get("psi"),
            }
        )
    thresholds = json.loads(rows[-1]["doc"]).get("thresholds", {}) if rows else {}
    return {
        "features": list(FEATURES),
        "psi_threshold": thresholds.get("psi", 0.2),
        "alpha": thresholds.get("alpha", 0.05),
        "shift_at": shift_at,
        "windows": windows,
    }


def _experiment(ws: Workspace, db: ControlDB) -> dict[str, Any] | None:
    from edgeloop_control.experiments import ExperimentManager

    manager = ExperimentManager(ws, db, None)
    experiments = manager.status()
    if not experiments:
        return None
    exp = experiments[-1]
    return {
        "id": exp.get("id"),
        "champion": exp.get("champion"),
        "challenger": exp.get("challenger"),
        "metric": exp.get("metric", "accuracy"),
        "higher_is_better": exp.get("higher_is_better", True),
        "alpha": exp.get("alpha", 0.05),
        "tau": exp.get("tau"),
        "looks": manager.looks(exp["id"]),
        "srm": exp.get("srm"),
        "decision": exp.get("decision"),
    }


def _rollout(ws: Workspace, db: ControlDB) -> dict[str, Any] | None:
    from edgeloop_control.rollout import RolloutManager
    from edgeloop_control.rollout.view import report_view

    rollouts = RolloutManager(ws, db, None).status()
    if not rollouts:
        return None
    return report_view(rollouts[-1])


def _devices(db: ControlDB, client: DemoClient, devices: list[str]) -> list[dict[str, Any]]:
    out = []
    for name in devices:
        row = db.device(name) or {}
        status = row.get("status") or {}
        telemetry = row.get("telemetry") or {}
        served = [m.get("variant") for m in status.get("models", []) if m.get("role") == "serve"]
        p99_ms = merged_p99_ms(
            lat
            for (lat,) in db.conn.execute(
                "SELECT latency FROM variant_stats WHERE device = ?", (name,)
            )
        )
        st = client.stats.get(name)
        rss = telemetry.get("rss_bytes")
        out.append(
            {
                "device": name,
                "online": bool(row.get("online")),
                "model": ", ".join(served),
                "requests": st.sent if st else 0,
                "errors": st.errors if st else 0,
                "p99_ms": round(p99_ms, 3) if p99_ms is not None else None,
                "rss_mb": round(rss / 2**20, 1) if rss else None,
            }
        )
    return out
