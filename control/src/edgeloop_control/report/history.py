"""Read-side queries over what the control node recorded: drift windows, experiments,
rollouts, events and the fleet inventory, filtered by time range, device and model.

Used by ``edgeloop report`` and ``edgeloop drift``. Nothing here writes: an experiment or
rollout table that does not exist yet (a workspace that never ran one) simply yields
nothing, instead of being created by a read. Experiments and rollouts are read through their
managers' read APIs (``status``), so they look exactly as ``edgeloop ab status`` and
``edgeloop rollout status`` show them.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB, merged_p99_ms
from edgeloop_control.infra.workspace import Workspace

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


class HistoryError(EdgeloopError, ValueError):
    """A filter the caller gave cannot be used (the message names it)."""


def parse_when(text: str, *, now: float | None = None, option: str = "--since") -> float:
    """``2h``/``7d``/``30m``/``1w`` before now, ``now``, or an ISO 8601 date or date-time
    (``2026-12-01``, ``2026-12-01T14:00``, ``...Z`` or ``+02:00``; naive means UTC)."""
    now = time.time() if now is None else now
    raw = text.strip()
    if raw.lower() == "now":
        return now
    match = _RELATIVE.fullmatch(raw.lower())
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    # Python 3.10's fromisoformat does not read a "Z" suffix.
    iso = raw[:-1] + "+00:00" if raw[-1:] in ("Z", "z") else raw
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise HistoryError(
            f"{option} {text!r}: not a date/time (ISO 8601 such as 2026-12-01 or "
            "2026-12-01T14:00Z) nor a time ago such as 90s, 30m, 2h, 7d or 2w"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


@dataclass(frozen=True)
class Selection:
    """What to look at: a time range (unix seconds, either end open) and, when given, only
    these devices and models (a model is ``name`` for every version or ``name@vN``)."""

    since: float | None = None
    until: float | None = None
    devices: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise HistoryError(
                f"--since ({_iso(self.since)}) is after --until ({_iso(self.until)})"
            )

    def overlaps(self, start: float | None, end: float | None) -> bool:
        """Does [start, end] (end None: still going) meet the selected range?"""
        lo = -math.inf if start is None else start
        hi = math.inf if end is None else end
        return (self.until is None or lo <= self.until) and (self.since is None or hi >= self.since)

    def where(self, column: str, *, by_device: bool = False) -> tuple[str, list[Any]]:
        """SQL conditions (each starting with `` AND``) and their arguments: ``column``
        within the range and, with ``by_device``, ``device`` among the selected ones.
        ``column`` is always a constant of this module, never user input."""
        sql, args = "", list[Any]()
        if self.since is not None:
            sql += f" AND {column} >= ?"
            args.append(self.since)
        if self.until is not None:
            sql += f" AND {column} <= ?"
            args.append(self.until)
        if by_device and self.devices:
            sql += f" AND device IN ({', '.join('?' * len(self.devices))})"
            args.extend(self.devices)
        return sql, args

    def device_ok(self, device: str | None) -> bool:
        return not self.devices or device in self.devices

    def model_ok(self, variant: str | None) -> bool:
        if not self.models:
            return True
        if not variant:
            return False
        name = variant.split("@", 1)[0]
        return any(m in (variant, name) for m in self.models)

    def describe(self) -> str:
        parts = [
            f"from {_iso(self.since)}" if self.since is not None else "from the beginning",
            f"until {_iso(self.until)}" if self.until is not None else "until now",
        ]
        if self.devices:
            parts.append("devices " + ", ".join(self.devices))
        if self.models:
            parts.append("models " + ", ".join(self.models))
        return "; ".join(parts)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def has_table(db: ControlDB, name: str) -> bool:
    return sql.has_table(db.conn, name)


def _overlapping(db: ControlDB, table: str, start: str, end: str, sel: Selection) -> bool:
    """Does ``table`` exist and hold a row whose [start, end] meets the selected range?"""
    if not has_table(db, table):
        return False
    # Table and column names are this module's constants, never user input.
    query, args = f"SELECT 1 FROM {table} WHERE 1=1", []
    if sel.until is not None:
        query += f" AND {start} <= ?"
        args.append(sel.until)
    if sel.since is not None:
        query += f" AND ({end} IS NULL OR {end} >= ?)"
        args.append(sel.since)
    return db.conn.execute(query + " LIMIT 1", args).fetchone() is not None


# -- drift -----------------------------------------------------------------------------


def drift_windows(
    db: ControlDB, sel: Selection, *, last: int | None = None
) -> list[dict[str, Any]]:
    """Completed drift windows in the selection, oldest first; ``last``: only the newest
    ``last`` of each device/variant stream. Each is the agent's window document (features
    with psi, ks_p, ks_p_adjusted, drift, reasons, and categorical ones with
    ``kind: categorical`` and chi2_p, chi2_p_adjusted; output; multivariate, the PCA
    reconstruction-error test named :data:`MULTIVARIATE`, or None; thresholds) plus where
    it came from (device, variant, version, start, end, n)."""
    query = (
        "SELECT device, variant, version, start, end, n, enough_data, dataset_drift, "
        "output_drift, doc FROM drift_windows WHERE 1=1"
    )
    conditions, args = sel.where("end", by_device=True)
    query += conditions
    out = _hourly_windows(db, sel)
    for r in db.conn.execute(query + " ORDER BY end, rowid", args):
        if not sel.model_ok(r["variant"]):
            continue
        try:
            doc = json.loads(r["doc"])
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        features = [f for f in doc.get("features") or [] if isinstance(f, dict) and "name" in f]
        output = doc.get("output") if isinstance(doc.get("output"), dict) else None
        multi = doc.get("multivariate") if isinstance(doc.get("multivariate"), dict) else None
        thresholds = doc.get("thresholds") if isinstance(doc.get("thresholds"), dict) else {}
        estimated = doc.get("estimated") if isinstance(doc.get("estimated"), dict) else None
        out.append(
            {
                "device": r["device"],
                "variant": r["variant"],
                "version": r["version"],
                "start": r["start"],
                "end": r["end"],
                "n": r["n"],
                "enough_data": bool(r["enough_data"]),
                "dataset_drift": bool(r["dataset_drift"]),
                "output_drift": bool(r["output_drift"]),
                "features": features,
                "output": output,
                "multivariate": None if multi is None else {**multi, "name": MULTIVARIATE},
                "thresholds": thresholds,
                "estimated": estimated,
            }
        )
    if out and out[0].get("aggregated"):
        out.sort(key=lambda w: w["end"])  # stable: raw windows keep their order
    if last is not None:
        streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for w in out:
            streams.setdefault((w["device"], w["variant"]), []).append(w)
        keep = {id(w) for ws in streams.values() for w in ws[-last:]}
        out = [w for w in out if id(w) in keep]
    return out


def _hourly_windows(db: ControlDB, sel: Selection) -> list[dict[str, Any]]:
    """Hours of windows older than the retention's raw window (``drift_hourly``), each as
    one window-shaped dict with ``aggregated``, ``windows`` and ``flagged``; selected by
    the end of their newest window, like raw windows."""
    if not has_table(db, "drift_hourly"):
        return []  # a read-only view of a database no daemon of this release opened
    from edgeloop_control.policies.retention.aggregate import hour_as_window

    conditions, args = sel.where("end", by_device=True)
    rows = db.conn.execute(f"SELECT * FROM drift_hourly WHERE 1=1{conditions} ORDER BY end", args)
    return [hour_as_window(r) for r in rows if sel.model_ok(r["variant"])]


def aggregated_before(db: ControlDB) -> float | None:
    """The end of the newest hour retention folded (data older than it is hourly
    aggregates, not raw rows), or None when nothing was ever aggregated."""
    newest = None
    for table in ("variant_stats_hourly", "drift_hourly"):
        if has_table(db, table):
            value = db.conn.execute(f"SELECT MAX(hour) FROM {table}").fetchone()[0]
            if value is not None:
                newest = max(newest or value, value)
    return None if newest is None else float(newest) + 3600.0


def aggregation_note(db: ControlDB, sel: Selection) -> str | None:
    """The sentence readers print when the selection reaches into aggregated data."""
    before = aggregated_before(db)
    if before is None or (sel.since is not None and sel.since >= before):
        return None
    return (
        f"data before {_iso(before)} is hourly aggregated (retention): one row per device, "
        "model and hour with counts, mean and max PSI, the smallest p-value"
    )


# The window's PCA reconstruction-error block, shown as one more row beside the features.
MULTIVARIATE = "multivariate (PCA reconstruction)"


def feature_p(feature: dict[str, Any]) -> float | None:
    """The p-value that decided a feature: the multiple-testing adjusted KS p-value of a
    numeric feature (or of the multivariate block), the adjusted chi-square p-value of a
    categorical one, else the raw one (or any test's ``p_value``, for other feature types)."""
    keys = ("ks_p_adjusted", "chi2_p_adjusted", "ks_p", "chi2_p", "p_value_adjusted", "p_value")
    for key in keys:
        value = feature.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def model_features(ws: Workspace, variants: list[str]) -> dict[str, list[str]]:
    """{variant: the model's feature names in request order} from the registry metadata,
    for the variants it knows (a missing registry or version is simply left out)."""
    from edgeloop_control.registry import Registry, RegistryError

    try:
        registry = Registry.for_workspace(ws, create=False, sync_remote=False)
    except (RegistryError, OSError):
        return {}
    out: dict[str, list[str]] = {}
    for variant in variants:
        try:
            features = registry.get(variant).metadata.get("features")
        except (RegistryError, OSError, ValueError):
            continue
        if isinstance(features, list) and all(isinstance(f, str) for f in features):
            out[variant] = list(features)
    return out


def feature_order(windows: list[dict[str, Any]], known: dict[str, list[str]]) -> list[str]:
    """Every feature, in model order: the registry's lists first (variants in the order
    they appear), then any feature only the windows name, in first-seen order."""
    order: dict[str, None] = {}
    for variant in dict.fromkeys(w["variant"] for w in windows):
        for name in known.get(variant, []):
            order.setdefault(name)
    for names in known.values():
        for name in names:
            order.setdefault(name)
    for w in windows:
        for f in w["features"]:
            order.setdefault(str(f["name"]))
    return list(order)


# -- experiments and rollouts -----------------------------------------------------------


def experiments(ws: Workspace, db: ControlDB, sel: Selection) -> list[dict[str, Any]]:
    """Every experiment that ran in the selected range (created before its end, not ended
    before its start) on the selected devices/models, oldest first, as ``ab status`` has it."""
    if not _overlapping(db, "experiments", "created_at", "ended_at", sel):
        return []
    # Imported only when there is something to show: it pulls in scipy.stats (seconds).
    from edgeloop_control.policies.experiments import ExperimentManager

    out = []
    for exp in ExperimentManager(ws, db, None).status():
        if not sel.overlaps(exp.get("created_at"), exp.get("ended_at")):
            continue
        if sel.models and not any(
            sel.model_ok(v) for v in (exp.get("champion"), exp.get("challenger"))
        ):
            continue
        if sel.devices and not set(exp.get("devices") or []) & set(sel.devices):
            continue
        out.append(exp)
    return out


def rollouts(ws: Workspace, db: ControlDB, sel: Selection) -> list[dict[str, Any]]:
    """Every rollout that ran in the selected range on the selected devices/models."""
    if not _overlapping(db, "rollouts", "created_at", "finished_at", sel):
        return []
    from edgeloop_control.policies.rollout import RolloutManager

    out = []
    for r in RolloutManager(ws, db, None).status():
        if not sel.overlaps(r.get("created_at"), r.get("finished_at")):
            continue
        if not sel.model_ok(r.get("model")):
            continue
        members = {d["device"] for b in r.get("batches") or [] for d in b.get("devices") or []}
        if sel.devices and not members & set(sel.devices):
            continue
        out.append(r)
    return out


# -- events and the fleet --------------------------------------------------------------------


def events(
    db: ControlDB, sel: Selection, *, related: set[str] | None = None
) -> list[dict[str, Any]]:
    """Control-node events in the time range, oldest first. With a device or model filter,
    an event is kept when its subject is a selected device or model (``name`` or
    ``name@vN``), one of ``related`` (ids of the selected experiments and rollouts, devices
    running the model), or its message names a selected device or model."""
    conditions, args = sel.where("ts")
    rows = db.conn.execute(
        f"SELECT ts, kind, subject, message, data FROM events WHERE 1=1{conditions} "
        "ORDER BY ts, id",
        args,
    ).fetchall()
    wanted = [*sel.devices, *sel.models]
    patterns = [re.compile(rf"(?<![\w.@-]){re.escape(w)}(?![\w.-])") for w in wanted]
    out = []
    for r in rows:
        subject = r["subject"] or ""
        if wanted:
            keep = (
                (sel.devices and subject in sel.devices)
                or (sel.models and sel.model_ok(subject) and subject != "")
                or subject in (related or set())
                or any(p.search(r["message"] or "") for p in patterns)
            )
            if not keep:
                continue
        out.append(
            {"ts": r["ts"], "kind": r["kind"], "subject": subject, "message": r["message"] or ""}
        )
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _models_text(models: list[dict[str, Any]]) -> str:
    parts = []
    for m in models:
        ref = m.get("variant") or f"{m.get('name')}@{m.get('version')}"
        if m.get("role") == "shadow":
            parts.append(f"{ref} (shadow)")
        elif m.get("weight") is not None and float(m.get("weight") or 0) < 100:
            parts.append(f"{ref} {float(m['weight']):g}%")
        else:
            parts.append(str(ref))
    return ", ".join(parts)


def _rate(stats: list[Any]) -> float | None:
    """Error replies / requests over the selected range; None without requests."""
    requests = sum(int(s["requests"] or 0) for s in stats)
    return sum(int(s["errors"] or 0) for s in stats) / requests if requests else None


def _hourly_stats(db: ControlDB, device: str, sel: Selection) -> list[Any]:
    """The device's aggregated hours that meet the selected range (an hour counts whole)."""
    if not has_table(db, "variant_stats_hourly"):
        return []
    query = "SELECT requests, errors, latency FROM variant_stats_hourly WHERE device = ?"
    args: list[Any] = [device]
    if sel.since is not None:
        query += " AND hour > ?"
        args.append(sel.since - 3600.0)
    if sel.until is not None:
        query += " AND hour <= ?"
        args.append(sel.until)
    return db.conn.execute(query, args).fetchall()


def fleet(db: ControlDB, sel: Selection) -> list[dict[str, Any]]:
    """One row per device in the inventory (and every device with a desired state): online,
    served and desired versions, drift state, traffic in the range, memory, outbox depth."""
    inventory = {d["device"]: d for d in db.devices()}
    desired = db.all_desired()
    out = []
    for name in sorted(set(inventory) | set(desired)):
        if not sel.device_ok(name):
            continue
        row = inventory.get(name) or {}
        status: dict[str, Any] = _dict(row.get("status"))
        telemetry: dict[str, Any] = _dict(row.get("telemetry"))
        want = desired.get(name) or {}
        served = [m for m in status.get("models") or [] if isinstance(m, dict)]
        wanted = [m for m in want.get("models") or [] if isinstance(m, dict)]
        variants = [
            m.get("variant") or f"{m.get('name')}@{m.get('version')}" for m in served + wanted
        ]
        if sel.models and not any(sel.model_ok(v) for v in variants):
            continue
        conditions, args = sel.where("ts")
        stats = db.conn.execute(  # every variant the device served
            f"SELECT requests, errors, latency FROM variant_stats WHERE device = ?{conditions}",
            [name, *args],
        ).fetchall()
        stats += _hourly_stats(db, name, sel)
        drift: dict[str, Any] = _dict(row.get("drift"))
        drifting = [
            f"{v}: {', '.join(d.get('drifted') or []) or 'dataset'}"
            for v, d in sorted(drift.items())
            if isinstance(d, dict) and d.get("data_drift") and sel.model_ok(v)
        ]
        rss = telemetry.get("rss_bytes")
        p99 = merged_p99_ms(s["latency"] for s in stats)
        out.append(
            {
                "device": name,
                "online": bool(row.get("online")),
                "serving": _models_text([m for m in served if m.get("role", "serve") == "serve"]),
                "desired": _models_text(wanted),
                "desired_revision": want.get("revision"),
                "reported_revision": status.get("revision"),
                "drift": "; ".join(drifting),
                "requests": sum(int(s["requests"] or 0) for s in stats) if stats else None,
                "errors": sum(int(s["errors"] or 0) for s in stats) if stats else None,
                "error_rate": _rate(stats),
                "p99_ms": round(p99, 3) if p99 is not None else None,
                "rss_mb": round(rss / 2**20, 1) if isinstance(rss, int | float) else None,
                "outbox_depth": telemetry.get("outbox_depth"),
                "last_seen": row.get("last_seen"),
            }
        )
    return out
