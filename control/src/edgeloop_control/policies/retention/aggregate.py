"""Folding raw rows into hourly rows: what the readers of a long span need, exactly.

Per (device, variant, hour): telemetry sums (requests, errors, labelled outcomes, the
regression error sums means are made of) and the latency histograms merged bucket by
bucket, so a p99 over aggregated hours is the p99 the raw reports give (same buckets);
drift windows as counts (windows, flagged), per feature the PSI sum/max and the smallest
deciding p-value, and the estimated metric as an n-weighted sum. An hour folded in two
runs (a report that arrived late, over its device's backlog) adds up to the same row.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from typing import Any

from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_agent.wire.numeric import is_number
from edgeloop_control.infra import sql

HOUR_S = 3600.0
STAT_SUMS = (
    "requests",
    "predictions",
    "errors",
    "cls_n",
    "cls_correct",
    "reg_n",
    "reg_sum_abs",
    "reg_sum_sq",
    "keyed",
    "unkeyed",
)
# The p-value that decided a feature, in the order report/history.feature_p reads them.
P_KEYS = ("ks_p_adjusted", "chi2_p_adjusted", "ks_p", "chi2_p", "p_value_adjusted", "p_value")

Key = tuple[str, str, float]


def hour_of(ts: float) -> float:
    return math.floor(ts / HOUR_S) * HOUR_S


# -- telemetry ------------------------------------------------------------------------


def fold_stats(conn: sql.Connection, rows: Sequence[sql.Row]) -> int:
    """Add ``variant_stats`` rows (joined with their ``variant_keys``) to their hourly rows;
    returns how many hourly rows were written."""
    groups: dict[Key, dict[str, Any]] = {}
    for r in rows:
        key = (str(r["device"]), str(r["variant"]), hour_of(float(r["ts"])))
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = _empty_stats(r["version"], float(r["ts"]))
        _add_stats(acc, r)
    for key, acc in groups.items():
        old = conn.execute(
            "SELECT * FROM variant_stats_hourly WHERE device = ? AND variant = ? AND hour = ?",
            key,
        ).fetchone()
        if old is not None:
            _add_stats(acc, old, reports=int(old["reports"]))
            acc["first_ts"] = min(acc["first_ts"], float(old["first_ts"]))
            acc["last_ts"] = max(acc["last_ts"], float(old["last_ts"]))
        latency = acc["latency"]
        conn.execute(
            "INSERT OR REPLACE INTO variant_stats_hourly(device, variant, hour, version, "
            f"reports, {', '.join(STAT_SUMS)}, latency, first_ts, last_ts) "
            f"VALUES ({', '.join('?' * (8 + len(STAT_SUMS)))})",
            (
                *key,
                acc["version"],
                acc["reports"],
                *(acc[k] for k in STAT_SUMS),
                None if latency is None else json.dumps(latency.to_dict()),
                acc["first_ts"],
                acc["last_ts"],
            ),
        )
    return len(groups)


def _empty_stats(version: Any, ts: float) -> dict[str, Any]:
    acc: dict[str, Any] = dict.fromkeys(STAT_SUMS, 0)
    acc.update(version=version, reports=0, latency=None, first_ts=ts, last_ts=ts)
    return acc


def _add_stats(acc: dict[str, Any], row: sql.Row, *, reports: int = 1) -> None:
    names = row.keys()
    for k in STAT_SUMS:
        acc[k] += (row[k] or 0) if k in names else 0
    acc["reports"] += reports
    if "ts" in names:
        acc["first_ts"] = min(acc["first_ts"], float(row["ts"]))
        acc["last_ts"] = max(acc["last_ts"], float(row["ts"]))
    hist = _histogram(row["latency"])
    if hist is not None:
        if acc["latency"] is None:
            acc["latency"] = hist
        else:
            # Another layout (an agent from another release) is not mergeable: left out.
            with contextlib.suppress(ValueError):
                acc["latency"].merge(hist)


def _histogram(raw: str | None) -> LatencyHistogram | None:
    if not raw:
        return None
    try:
        return LatencyHistogram.from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        return None  # malformed: no evidence either way, as merged_p99_ms treats it


# -- drift windows --------------------------------------------------------------------


def fold_windows(conn: sql.Connection, rows: Sequence[sql.Row]) -> int:
    """Add ``drift_windows`` rows to their hourly rows; returns how many were written."""
    groups: dict[Key, dict[str, Any]] = {}
    for r in rows:
        key = (str(r["device"]), str(r["variant"]), hour_of(float(r["end"])))
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = _empty_windows(r["version"])
        _add_window(acc, r)
    for key, acc in groups.items():
        old = conn.execute(
            "SELECT * FROM drift_hourly WHERE device = ? AND variant = ? AND hour = ?", key
        ).fetchone()
        if old is not None:
            _merge_hours(acc, old)
        conn.execute(
            "INSERT OR REPLACE INTO drift_hourly(device, variant, hour, version, windows, n, "
            "enough_data, dataset_drift, output_drift, start, end, doc) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                *key,
                acc["version"],
                acc["windows"],
                acc["n"],
                acc["enough_data"],
                acc["dataset_drift"],
                acc["output_drift"],
                acc["start"],
                acc["end"],
                encode_doc(acc["doc"]),
            ),
        )
    return len(groups)


def _empty_windows(version: Any) -> dict[str, Any]:
    return {
        "version": version,
        "windows": 0,
        "n": 0,
        "enough_data": 0,
        "dataset_drift": 0,
        "output_drift": 0,
        "start": None,
        "end": -math.inf,
        "doc": {"features": {}, "output": None, "multivariate": None, "thresholds": {},
                "estimated": None},
    }  # fmt: skip


def _add_window(acc: dict[str, Any], r: sql.Row) -> None:
    acc["windows"] += 1
    acc["n"] += int(r["n"] or 0)
    acc["enough_data"] += 1 if r["enough_data"] else 0
    acc["dataset_drift"] += 1 if r["dataset_drift"] else 0
    acc["output_drift"] += 1 if r["output_drift"] else 0
    start = r["start"] if is_number(r["start"]) else r["end"]
    acc["start"] = start if acc["start"] is None else min(acc["start"], start)
    acc["end"] = max(acc["end"], float(r["end"]))
    try:
        doc = json.loads(r["doc"])
    except ValueError:
        return  # the counts above still hold; the per-feature figures lack this window
    if not isinstance(doc, dict):
        return
    out = acc["doc"]
    for f in doc.get("features") or []:
        if isinstance(f, dict) and isinstance(f.get("name"), str):
            _add_test(out["features"].setdefault(f["name"], _empty_test(f)), f)
    for part in ("output", "multivariate"):
        block = doc.get(part)
        if isinstance(block, dict):
            out[part] = out[part] or _empty_test(block)
            _add_test(out[part], block)
    if isinstance(doc.get("thresholds"), dict):
        out["thresholds"] = doc["thresholds"]  # the newest window's
    estimated = doc.get("estimated")
    if isinstance(estimated, dict) and is_number(estimated.get("value")):
        n = estimated.get("n")
        weight = float(n) if is_number(n) and n > 0 else 1.0
        e = out["estimated"] = out["estimated"] or {"sum": 0.0, "weight": 0.0}
        e["sum"] += float(estimated["value"]) * weight
        e["weight"] += weight
        e["metric"] = estimated.get("metric")
        if is_number(estimated.get("reference")):
            e["reference"] = float(estimated["reference"])


def _empty_test(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": block.get("kind") if isinstance(block.get("kind"), str) else None,
        "windows": 0,
        "flagged": 0,
        "psi_sum": 0.0,
        "psi_n": 0,
        "psi_max": None,
        "p_key": None,
        "p_min": None,
    }


def _add_test(acc: dict[str, Any], block: dict[str, Any]) -> None:
    acc["windows"] += 1
    acc["flagged"] += 1 if block.get("drift") else 0
    psi = block.get("psi")
    if is_number(psi):
        acc["psi_sum"] += float(psi)
        acc["psi_n"] += 1
        acc["psi_max"] = float(psi) if acc["psi_max"] is None else max(acc["psi_max"], psi)
    for key in P_KEYS:
        p = block.get(key)
        if is_number(p):
            acc["p_key"] = acc["p_key"] or key
            acc["p_min"] = float(p) if acc["p_min"] is None else min(acc["p_min"], float(p))
            break


def _merge_tests(acc: dict[str, Any], old: dict[str, Any]) -> None:
    for k in ("windows", "flagged", "psi_sum", "psi_n"):
        acc[k] += old.get(k) or 0
    for k, pick in (("psi_max", max), ("p_min", min)):
        values = [v for v in (acc[k], old.get(k)) if is_number(v)]
        acc[k] = pick(values) if values else None
    acc["p_key"] = acc["p_key"] or old.get("p_key")
    acc["kind"] = acc["kind"] or old.get("kind")


def _merge_hours(acc: dict[str, Any], old: sql.Row) -> None:
    """``old``, an hourly row already stored, into ``acc`` (the same hour's new windows)."""
    for k in ("windows", "n", "enough_data", "dataset_drift", "output_drift"):
        acc[k] += int(old[k] or 0)
    if is_number(old["start"]):
        acc["start"] = min(acc["start"], old["start"]) if is_number(acc["start"]) else old["start"]
    acc["end"] = max(acc["end"], float(old["end"]))
    prev = decode_doc(old["doc"])
    doc = acc["doc"]
    for name, test in (prev.get("features") or {}).items():
        if name in doc["features"]:
            _merge_tests(doc["features"][name], test)
        else:
            doc["features"][name] = test
    for part in ("output", "multivariate"):
        if isinstance(prev.get(part), dict):
            if doc[part] is None:
                doc[part] = prev[part]
            else:
                _merge_tests(doc[part], prev[part])
    doc["thresholds"] = doc["thresholds"] or prev.get("thresholds") or {}
    e_old = prev.get("estimated")
    if isinstance(e_old, dict):
        if doc["estimated"] is None:
            doc["estimated"] = e_old
        else:
            doc["estimated"]["sum"] += e_old.get("sum", 0.0)
            doc["estimated"]["weight"] += e_old.get("weight", 0.0)


# -- the stored form of an hour's tests ------------------------------------------------

# An hour of 8 features is ~2 KB of JSON with the long names: one-letter keys (and the
# p-value's key as its index in P_KEYS) make drift_hourly the smaller part of what grows.
_SHORT = {
    "windows": "w",
    "flagged": "f",
    "psi_sum": "s",
    "psi_n": "n",
    "psi_max": "x",
    "p_min": "p",
    "p_key": "k",
    "kind": "t",
}
_LONG = {v: k for k, v in _SHORT.items()}


def _pack(test: dict[str, Any]) -> dict[str, Any]:
    out = {_SHORT[k]: v for k, v in test.items() if k in _SHORT and v is not None}
    if "k" in out:
        out["k"] = P_KEYS.index(out["k"])
    return out


def _unpack(packed: Any) -> dict[str, Any]:
    test: dict[str, Any] = dict.fromkeys(_SHORT)
    test.update(windows=0, flagged=0, psi_sum=0.0, psi_n=0)
    if isinstance(packed, dict):
        test.update({_LONG[k]: v for k, v in packed.items() if k in _LONG})
    key = test["p_key"]
    test["p_key"] = P_KEYS[key] if isinstance(key, int) and 0 <= key < len(P_KEYS) else None
    return test


def encode_doc(doc: dict[str, Any]) -> str:
    """The ``drift_hourly.doc`` text of an hour's accumulated tests."""
    stored = {
        **doc,
        "features": {name: _pack(t) for name, t in doc["features"].items()},
        "output": None if doc["output"] is None else _pack(doc["output"]),
        "multivariate": None if doc["multivariate"] is None else _pack(doc["multivariate"]),
    }
    return json.dumps({k: v for k, v in stored.items() if v is not None}, allow_nan=False)


def decode_doc(text: str | None) -> dict[str, Any]:
    """An hour's accumulated tests from ``drift_hourly.doc``; a damaged one reads as empty."""
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    features = doc.get("features")
    features = features if isinstance(features, dict) else {}
    return {
        "features": {str(name): _unpack(t) for name, t in features.items()},
        "output": _unpack(doc["output"]) if isinstance(doc.get("output"), dict) else None,
        "multivariate": _unpack(doc["multivariate"])
        if isinstance(doc.get("multivariate"), dict)
        else None,
        "thresholds": doc.get("thresholds") if isinstance(doc.get("thresholds"), dict) else {},
        "estimated": doc.get("estimated") if isinstance(doc.get("estimated"), dict) else None,
    }


# -- reading an hourly drift row as a window ------------------------------------------


def hour_as_window(row: sql.Row) -> dict[str, Any]:
    """An hourly ``drift_hourly`` row in the shape report/history gives a window: per
    feature the mean PSI (``psi``), its maximum, the smallest deciding p-value under the key
    the windows used, and ``drift`` when any window flagged it; plus ``aggregated``,
    ``windows`` and ``flagged`` (windows with dataset drift)."""
    doc = decode_doc(row["doc"])
    features = [_test_view(name, t) for name, t in (doc.get("features") or {}).items()]
    estimated = doc.get("estimated") if isinstance(doc.get("estimated"), dict) else None
    return {
        "device": row["device"],
        "variant": row["variant"],
        "version": row["version"],
        "start": row["start"],
        "end": row["end"],
        "n": row["n"],
        "enough_data": bool(row["enough_data"]),
        "dataset_drift": bool(row["dataset_drift"]),
        "output_drift": bool(row["output_drift"]),
        "features": features,
        "output": _test_view("output", doc["output"]) if doc.get("output") else None,
        "multivariate": _test_view("multivariate", doc["multivariate"])
        if doc.get("multivariate")
        else None,
        "thresholds": doc.get("thresholds") if isinstance(doc.get("thresholds"), dict) else {},
        "estimated": _estimated_view(estimated),
        "aggregated": True,
        "hour": row["hour"],
        "windows": int(row["windows"]),
        "flagged": int(row["dataset_drift"]),
    }


def _test_view(name: str, t: dict[str, Any]) -> dict[str, Any]:
    windows, flagged = int(t.get("windows") or 0), int(t.get("flagged") or 0)
    psi_n = int(t.get("psi_n") or 0)
    out: dict[str, Any] = {
        "name": name,
        "psi": t["psi_sum"] / psi_n if psi_n else None,
        "psi_max": t.get("psi_max"),
        "drift": flagged > 0,
        "windows": windows,
        "flagged": flagged,
        "reasons": [f"drift in {flagged} of {windows} windows"] if flagged else [],
    }
    if t.get("kind"):
        out["kind"] = t["kind"]
    if t.get("p_key") in P_KEYS and is_number(t.get("p_min")):
        out[t["p_key"]] = t["p_min"]
    return out


def _estimated_view(e: dict[str, Any] | None) -> dict[str, Any] | None:
    if not e or not is_number(e.get("weight")) or e["weight"] <= 0:
        return None
    return {
        "metric": e.get("metric"),
        "value": e["sum"] / e["weight"],
        "reference": e.get("reference"),
        "n": e["weight"],
    }
