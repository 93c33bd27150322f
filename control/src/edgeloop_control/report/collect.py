"""Gather the report's input (docs/report.md) from any workspace.

``collect_report(ws, db, selection)`` reads what the control node recorded (drift windows,
every experiment and rollout, events, the fleet inventory) through
:mod:`edgeloop_control.report.history` and returns the dict :func:`render_report` takes. The demo
calls it too, adding its narrated timeline and traffic summary.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report import history
from edgeloop_control.report.history import Selection

from .timefmt import elapsed

DEFAULT_PSI_THRESHOLD = 0.2


def _count(value: Any) -> int | None:
    """A count as stored (an agent's report is not trusted to be sane): else no value."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def drift_section(
    ws: Workspace | None, windows: list[dict[str, Any]], *, shift_at: float | None = None
) -> dict[str, Any] | None:
    """The ``drift`` section from :func:`history.drift_windows`; features in model order
    (the registry's list when the workspace has it) with every feature any window names."""
    if not windows and ws is None:
        return None
    variants = list(dict.fromkeys(w["variant"] for w in windows))
    known = history.model_features(ws, variants) if ws is not None and variants else {}
    features = history.feature_order(windows, known)
    if any(w.get("multivariate") for w in windows):
        features.append(history.MULTIVARIATE)
    monitored = {str(f["name"]) for w in windows for f in _judged(w)}
    thresholds = windows[-1]["thresholds"] if windows else {}
    psi_threshold = _number(thresholds.get("psi"))
    if psi_threshold is None or psi_threshold <= 0:
        psi_threshold = DEFAULT_PSI_THRESHOLD
    return {
        "features": features,
        "psi_threshold": psi_threshold,
        "alpha": _number(thresholds.get("alpha")),
        "shift_at": shift_at,
        "feature_notes": {
            f: "no PSI in any window: the agent does not monitor this feature (its model's "
            "reference profile does not cover it: trained before categorical profiles, or "
            "without numeric features)"
            for f in features
            if f not in monitored
        },
        "windows": [
            {
                "t": w["end"],
                "device": w["device"],
                "variant": w["variant"],
                "n": _count(w["n"]),
                "dataset_drift": w["dataset_drift"],
                "psi": {str(f["name"]): _number(f.get("psi")) for f in _judged(w)},
                "ks_p": {str(f["name"]): history.feature_p(f) for f in _judged(w)},
                "output_psi": _number((w["output"] or {}).get("psi")),
                "estimated": _number((w.get("estimated") or {}).get("value")),
                "estimated_reference": _number((w.get("estimated") or {}).get("reference")),
                # An hour of windows folded by retention: how many, how many flagged.
                "windows": int(w.get("windows", 1)),
                "flagged": int(w.get("flagged", 1 if w["dataset_drift"] else 0)),
            }
            for w in windows
        ],
    }


def _judged(w: dict[str, Any]) -> list[dict[str, Any]]:
    """The window's features (numeric and categorical), then its multivariate block."""
    multi = w.get("multivariate")
    return [*w["features"], *([multi] if isinstance(multi, dict) else [])]


def experiment_section(exp: dict[str, Any]) -> dict[str, Any]:
    """One ``ExperimentManager.status()`` entry in the report's shape."""
    srm = exp.get("srm") if isinstance(exp.get("srm"), dict) else None
    decision = exp.get("decision") if isinstance(exp.get("decision"), dict) else None
    return {
        "id": str(exp["id"]),
        "champion": str(exp["champion"]),
        "challenger": str(exp["challenger"]),
        "metric": str(exp.get("metric") or "metric"),
        "higher_is_better": bool(exp.get("higher_is_better", True)),
        "alpha": _number(exp.get("alpha")),
        "tau": _number(exp.get("tau")),
        "state": str(exp.get("state") or ""),
        "looks": [lk for lk in exp.get("looks") or [] if _number(lk.get("t")) is not None],
        "srm": None
        if srm is None
        else {"p_value": _number(srm.get("p_value")),
              "flag": bool(srm.get("flag", srm.get("mismatch", False))),
              "unit": str(srm.get("unit") or "requests")},
        "decision": None
        if decision is None or not decision.get("action")
        else {"action": str(decision["action"]), "reason": str(decision.get("reason") or ""),
              "t": _number(decision.get("t"))},
    }  # fmt: skip


def rollout_section(status: dict[str, Any]) -> dict[str, Any]:
    from edgeloop_control.policies.rollout.view import report_view

    return {**report_view(status), "id": str(status.get("id") or "")}


def collect_report(
    ws: Workspace,
    db: ControlDB,
    sel: Selection,
    *,
    title: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything in ``sel`` on one page: fleet, drift per feature, all experiments and
    rollouts, events; each empty section says why it is empty."""
    now = time.time() if now is None else now
    windows = history.drift_windows(db, sel)
    unreadable: dict[str, str] = {}
    # A damaged experiment or rollout record (or a broken [experiment]/[rollout] section in
    # edgeloop.toml) must not cost the rest of the page: that section says what went wrong.
    try:
        exps = history.experiments(ws, db, sel)
    except ValueError as exc:
        exps, unreadable["experiments"] = [], f"the experiments could not be read: {exc}"
    try:
        outs = history.rollouts(ws, db, sel)
    except ValueError as exc:
        outs, unreadable["rollouts"] = [], f"the rollouts could not be read: {exc}"
    devices = history.fleet(db, sel)
    related = {str(e["id"]) for e in exps} | {str(r["id"]) for r in outs}
    related |= {d["device"] for d in devices} if sel.models else set()
    evts = history.events(db, sel, related=related)
    drift = drift_section(ws, windows)
    scope = "in the selected range" if sel.since is not None or sel.until is not None else ""
    if sel.devices or sel.models:
        scope = (scope + " for the selected devices/models").strip()
    suffix = f" {scope}" if scope else ""
    data: dict[str, Any] = {
        "title": title or f"edgeloop report: {Path(ws.root).name}",
        "generated_at": now,
        "workspace": str(ws.root),
        "timeline": None,
        "events": [
            {"t": e["ts"], "kind": e["kind"], "subject": e["subject"], "message": e["message"]}
            for e in evts
        ],
        "drift": drift,
        "experiments": [experiment_section(e) for e in exps],
        "rollouts": [rollout_section(r) for r in outs],
        "devices": [
            {
                "device": d["device"],
                "online": d["online"],
                "model": d["serving"] or None,
                "desired": d["desired"] or None,
                "drift": d["drift"] or None,
                "requests": _count(d["requests"]),
                "errors": _count(d["errors"]),
                "p99_ms": d["p99_ms"],
                "rss_mb": d["rss_mb"],
                "outbox_depth": d["outbox_depth"]
                if isinstance(d["outbox_depth"], int) and d["outbox_depth"] >= 0
                else None,
                "last_seen": _number(d["last_seen"]),
            }
            for d in devices
        ],
        "empty_reasons": {
            "drift_windows": f"no drift windows were reported{suffix}",
            "experiments": f"no experiment ran{suffix}",
            "rollouts": f"no rollout ran{suffix}",
            "events": f"no control-node events were recorded{suffix}",
            **unreadable,
        },
    }
    data["summary"] = summary(data, sel)
    note = history.aggregation_note(db, sel)
    if note is not None:
        data["summary"]["older data"] = note
    return data


def covered_span(data: dict[str, Any]) -> tuple[float, float] | None:
    """(first, last) timestamp the page shows, via the validated model's own list."""
    from .validate import parse_report

    times = parse_report({**data, "summary": None}).all_times()
    return (min(times), max(times)) if times else None


def summary(data: dict[str, Any], sel: Selection) -> dict[str, Any]:
    drift = data["drift"] or {"windows": []}
    span = covered_span(data)
    out: dict[str, Any] = {"selection": sel.describe()}
    if span is not None:
        out["first record"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(span[0]))
        out["last record"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(span[1]))
        # The span the records cover, never "now - 0" for a page without records.
        out["span covered"] = elapsed(span[1] - span[0])
    requests = [d["requests"] for d in data["devices"] if d["requests"] is not None]
    out.update(
        {
            "devices": len(data["devices"]),
            "drift windows": sum(w.get("windows", 1) for w in drift["windows"]),
            "windows flagged": sum(
                w.get("flagged", 1 if w["dataset_drift"] else 0) for w in drift["windows"]
            ),
            "experiments": len(data["experiments"]),
            "rollouts": len(data["rollouts"]),
            "events": len(data["events"]),
        }
    )
    if requests:
        out["requests"] = sum(requests)
    return out
