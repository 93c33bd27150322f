"""Fleet messages -> the control database, idempotently.

Agents deliver at least once; every table written here is keyed by the id the
agent put in the message (report id, window index, sample id), so a message
that arrives twice changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from edgeloop_agent.wire import keysketch
from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.fleet.messages import (
    PoisonMessage,
    load_json,
    parse_report,
    parse_status,
    topic_device,
)
from edgeloop_control.infra.db import ControlDB

log = logging.getLogger("edgeloop.control.ingest")

# A fleet message the control node cannot use; counted and logged. The typed
# parsers of daemon/messages.py raise it, so every caller of these handlers
# (the daemon, the rollout command's own feed) gets the same checks.
IngestError = PoisonMessage


def ingest_message(db: ControlDB, prefix: str, topic: str, payload: bytes) -> str:
    """Check and store one ``{prefix}/{device}/status|telemetry`` message.

    Returns what it was: ``"status"``, ``"telemetry"``, ``"duplicate"`` (a report
    already stored) or ``"cleared"`` (an empty payload: a retained status being
    cleared). Raises :class:`PoisonMessage` for anything unusable, named in one line.
    """
    device, leaf = topic_device(topic, prefix)
    if leaf not in ("status", "telemetry"):
        raise PoisonMessage(f"{leaf!r} messages are not status or telemetry")
    if not payload:
        return "cleared"
    doc = load_json(payload, leaf)
    if leaf == "status":
        handle_status(db, device, doc)
        return "status"
    return "telemetry" if handle_report(db, doc, device) else "duplicate"


def _store_assigned(conn: Any, report_id: str, variant: str, assigned: Any) -> None:
    """The variant's assignment counts and key sketch (agents that count them)."""
    if not isinstance(assigned, dict):
        return
    keyed, unkeyed = assigned.get("keyed"), assigned.get("unkeyed")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (keyed, unkeyed)):
        log.warning("ignoring the assignment counts of report %s: not counts", report_id)
        return
    sketch = None
    if assigned.get("keys") is not None:
        try:
            keysketch.from_wire(assigned["keys"])
            sketch = json.dumps(assigned["keys"])
        except ValueError as exc:
            # The counts stay usable; only the distinct-key estimate of this report is lost.
            log.warning("ignoring the key sketch of report %s: %s", report_id, exc)
    conn.execute(
        "INSERT OR IGNORE INTO variant_keys(report_id, variant, keyed, unkeyed, sketch) "
        "VALUES (?,?,?,?,?)",
        (report_id, variant, keyed, unkeyed, sketch),
    )


def handle_status(db: ControlDB, device: str, doc: Any) -> None:
    doc = parse_status(device, doc)
    online = bool(doc.get("online"))
    fields: dict[str, Any] = {"online": 1 if online else 0, "status": doc}
    if online or doc.get("reason") == "stopped":
        # Seen = when the control node last heard from the device, on its own clock: a
        # device clock that is off, or a report queued in its outbox, must not make a
        # device that speaks now look silent. (A "lost" status is the broker's will.)
        fields["last_seen"] = time.time()
    if online:
        fields["reported_revision"] = doc.get("revision")
    with db.transaction():
        previous = db.device(device)
        db.upsert_device(device, **fields)
        was_online = bool(previous and previous.get("online"))
        if previous is None or was_online != online:
            what = "online" if online else f"offline ({doc.get('reason', 'lost')})"
            db.add_event("device", f"{device} is {what}", subject=device)
        error = doc.get("error")
        old_error = (previous or {}).get("status", {}) or {}
        if error and error != old_error.get("error"):
            db.add_event(
                "device_error",
                f"{device}: {error.get('code')}: {error.get('message')}",
                subject=device,
                data=error,
            )


def handle_report(db: ControlDB, envelope: Any, device: str | None = None) -> bool:
    """Store one telemetry report (from ``device``, the topic's); False if it was
    already stored."""
    envelope = parse_report(device, envelope)
    report = envelope["payload"]
    report_id = str(envelope.get("id") or report.get("report_id") or "")
    device = device or report.get("device") or envelope.get("device_id")
    if not report_id or not isinstance(device, str):
        raise IngestError("telemetry report has no id or device")
    ts = float(report.get("ts") or envelope.get("ts") or time.time())
    variants_meta = report.get("variants") or {}
    metrics = ((report.get("metrics") or {}).get("variants")) or {}
    with db.transaction() as conn:
        if not db.first_sighting(report_id):
            return False
        for variant, m in metrics.items():
            meta = variants_meta.get(variant) or {}
            cls = m.get("classification") or {}
            reg = m.get("regression") or {}
            errors = m.get("errors") or {}
            conn.execute(
                "INSERT OR IGNORE INTO variant_stats(report_id, variant, device, ts, experiment, "
                "revision, role, version, requests, predictions, errors, cls_n, cls_correct, "
                "reg_n, reg_sum_abs, reg_sum_sq, latency) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    report_id,
                    variant,
                    device,
                    ts,
                    report.get("experiment"),
                    report.get("revision"),
                    meta.get("role"),
                    meta.get("version"),
                    int(m.get("requests") or 0),
                    int(m.get("predictions") or 0),
                    int(sum(errors.values())) if isinstance(errors, dict) else 0,
                    int(cls.get("n") or 0),
                    int(cls.get("correct") or 0),
                    int(reg.get("n") or 0),
                    float(reg.get("sum_abs_error") or 0.0),
                    float(reg.get("sum_sq_error") or 0.0),
                    json.dumps(m.get("latency")) if m.get("latency") else None,
                ),
            )
            _store_assigned(conn, report_id, variant, m.get("assigned"))
        for idx, window in enumerate(report.get("drift") or []):
            features = window.get("features") or []
            output = window.get("output") or {}
            drifted = [f.get("name") for f in features if f.get("drift")]
            bounds = window.get("window") or {}
            if bounds.get("kind") == "time":
                start, end = bounds.get("start"), float(bounds.get("end") or ts)
            else:  # count windows are numbered in rows; the agent adds wall clock
                start, end = window.get("t_start"), float(window.get("t_end") or ts)
            conn.execute(
                "INSERT OR IGNORE INTO drift_windows(report_id, idx, device, variant, version, "
                "start, end, n, enough_data, dataset_drift, output_drift, drifted, doc) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    report_id,
                    idx,
                    device,
                    str(window.get("variant")),
                    window.get("version"),
                    start,
                    end,
                    int(bounds.get("n_rows") or 0),
                    1 if window.get("enough_data") else 0,
                    1 if window.get("dataset_drift") else 0,
                    1 if output.get("drift") else 0,
                    json.dumps(drifted),
                    json.dumps(window),
                ),
            )
        for variant, c in (report.get("concept_drift") or {}).items():
            conn.execute(
                "INSERT OR IGNORE INTO concept_drift(report_id, variant, device, ts, n, "
                "error_rate, drift, detections) VALUES (?,?,?,?,?,?,?,?)",
                (
                    report_id,
                    variant,
                    device,
                    ts,
                    int(c.get("n") or 0),
                    c.get("error_rate"),
                    1 if c.get("drift") else 0,
                    int(c.get("detections") or 0),
                ),
            )
        process = report.get("process") or {}
        outbox = report.get("outbox") or {}
        drift_state = _drift_state(db, device, report)
        db.upsert_device(
            device,
            last_seen=time.time(),
            drift=drift_state,
            telemetry={
                "ts": ts,
                "interval_s": report.get("interval_s"),
                **_traffic(metrics),
                "rss_bytes": process.get("rss_bytes"),
                "cpu_percent": process.get("cpu_percent"),
                "outbox_depth": outbox.get("depth"),
                "outbox_dropped": outbox.get("dropped"),
                "revision": report.get("revision"),
                "variants": variants_meta,
            },
        )
    return True


def _traffic(metrics: dict[str, Any]) -> dict[str, Any]:
    """Requests, errors and p99 (ms) over every variant of one report: the fleet view's
    per-device figures, kept in the inventory row the report already rewrites."""
    requests = errors = 0
    merged: LatencyHistogram | None = None
    for m in metrics.values():
        if not isinstance(m, dict):
            continue
        requests += int(m.get("requests") or 0)
        errs = m.get("errors") or {}
        errors += int(sum(errs.values())) if isinstance(errs, dict) else 0
        try:
            hist = LatencyHistogram.from_dict(m["latency"]) if m.get("latency") else None
        except (ValueError, TypeError, KeyError):
            hist = None  # a malformed histogram is no evidence either way
        if hist is None:
            continue
        if merged is None:
            merged = hist
        else:
            merged.merge(hist)
    p99 = merged.quantile(0.99) if merged is not None and merged.count else None
    return {
        "requests": requests,
        "errors": errors,
        "p99_ms": None if p99 is None else round(p99 * 1000.0, 3),
    }


def touch_seen(db: ControlDB, devices: Iterable[str], now: float | None = None) -> None:
    """Mark ``devices`` heard from now (samples and labels: they go to the feature store, so
    the daemon calls this once per stored batch, not once per message). Only devices the
    inventory holds: a message is not a registration."""
    when = time.time() if now is None else now
    db.conn.executemany(
        "UPDATE devices SET last_seen = ? "
        "WHERE device = ? AND (last_seen IS NULL OR last_seen < ?)",
        [(when, d, when) for d in dict.fromkeys(devices)],
    )


def _drift_state(db: ControlDB, device: str, report: dict[str, Any]) -> dict[str, Any] | None:
    """Per variant, the verdict of the newest drift window (this report's or an earlier
    one's) and the concept detector's state: the inventory's "drift" column."""
    previous = (db.device(device) or {}).get("drift") or {}
    state = {v: dict(s) for v, s in previous.items() if v in (report.get("variants") or {})}
    for window in report.get("drift") or []:
        variant = str(window.get("variant"))
        if not window.get("enough_data"):
            continue
        state[variant] = {
            **state.get(variant, {}),
            "data_drift": bool(window.get("dataset_drift")),
            "drifted": [f.get("name") for f in window.get("features") or [] if f.get("drift")],
            "window_end": window.get("t_end") or (window.get("window") or {}).get("end"),
        }
    for variant, concept in (report.get("concept_drift") or {}).items():
        state.setdefault(variant, {})["concept_error_rate"] = concept.get("error_rate")
    return state or None
