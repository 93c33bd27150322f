"""When to retrain: drift evidence per device and the scope of a new episode.

Reads what the fleet reported (``drift_windows`` and ``concept_drift`` rows,
written by ``fleet/ingest.py``) and what devices are told to run (desired
state); writes nothing. The policy turns a :class:`DriftEpisode` into an event
and an open episode in its store.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from edgeloop_control.fleet.inventory import unknown_among
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.policies.retrain.config import RetrainConfig


@dataclass(frozen=True)
class DriftEvidence:
    """Why one device counts as drifting."""

    # "data" (feature or output windows), "concept", or "estimated_performance"
    # (the label-free estimate fell below the training reference)
    signal: str
    features: list[str]  # drifted features; empty for output or concept drift
    since: float  # when the evidence begins: the episode trains on data from here on

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "features": self.features, "since": self.since}


@dataclass(frozen=True)
class DriftEpisode:
    """A variant found drifting: the devices that show it and those to retrain for."""

    variant: str
    drifting: dict[str, DriftEvidence]
    scope: list[str]
    since: float
    message: str

    def event_data(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "devices": {d: why.to_dict() for d, why in self.drifting.items()},
            "scope": self.scope,
        }


class DriftTrigger:
    """Decides whether a champion variant drifts, on which devices, and the episode's scope."""

    def __init__(self, db: ControlDB, config: RetrainConfig) -> None:
        self.db = db
        self.config = config

    def detect(self, variant: str) -> DriftEpisode | None:
        """The episode to open for ``variant``, or None when no device running it drifts."""
        running = self.devices_running(variant)
        drifting = {d: why for d in running if (why := self.evidence(d, variant))}
        if not drifting:
            return None
        scope = self.scope_devices(sorted(drifting), running)
        return DriftEpisode(
            variant=variant,
            drifting=drifting,
            scope=scope,
            since=min(why.since for why in drifting.values()),
            message=self._message(variant, drifting, scope),
        )

    def devices_running(self, variant: str) -> list[str]:
        """Known devices whose desired state serves ``variant`` with some traffic (a desired
        state left for a device the inventory does not hold is no member of any scope)."""
        out = []
        for device, doc in self.db.all_desired().items():
            if any(
                m.get("variant") == variant and m.get("role") == "serve" and m.get("weight", 0) > 0
                for m in doc.get("models", [])
            ):
                out.append(device)
        unknown = set(unknown_among(self.db, out))
        return [d for d in out if d not in unknown]

    def evidence(self, device: str, variant: str) -> DriftEvidence | None:
        """Drift of ``variant`` on ``device`` by the configured signals, or None."""
        n = self.config.consecutive_windows
        signals = self.config.signals
        rows = self.db.conn.execute(
            "SELECT start, end, dataset_drift, output_drift, drifted FROM drift_windows "
            "WHERE device = ? AND variant = ? AND enough_data = 1 ORDER BY end DESC LIMIT ?",
            (device, variant, n),
        ).fetchall()
        if len(rows) == n:
            flagged = [
                ("features" in signals and r["dataset_drift"])
                or ("output" in signals and r["output_drift"])
                for r in rows
            ]
            if all(flagged):
                features = sorted({f for r in rows for f in json.loads(r["drifted"])})
                since = min((r["start"] or r["end"]) for r in rows)
                return DriftEvidence("data", features, since)
        if "estimated_performance" in signals:
            estimated = self._estimated_drop(device, variant)
            if estimated is not None:
                return estimated
        if "concept" in signals:
            # The detector resets after it fires, so a detection shows as its
            # counter going up between two reports; the episode starts at the
            # report that saw it (training on data from before would mix worlds).
            rows = self.db.conn.execute(
                "SELECT ts, detections FROM concept_drift WHERE device = ? AND variant = ? "
                "ORDER BY ts DESC LIMIT ?",
                (device, variant, max(2, n)),
            ).fetchall()
            for newer, older in itertools.pairwise(rows):
                if newer["detections"] > older["detections"]:
                    return DriftEvidence("concept", [], older["ts"])
        return None

    def _estimated_drop(self, device: str, variant: str) -> DriftEvidence | None:
        """The last ``consecutive_windows`` windows all estimate the metric at least
        ``estimated_drop`` below the training reference the agent reported with it."""
        n = self.config.consecutive_windows
        path = (
            "$.estimated" if self.config.estimated_metric == "accuracy" else "$.estimated.roc_auc"
        )
        rows = self.db.conn.execute(
            "SELECT start, end, "
            f"CASE WHEN json_valid(doc) THEN json_extract(doc, '{path}.value') END AS value, "
            f"CASE WHEN json_valid(doc) THEN json_extract(doc, '{path}.reference') END AS ref "
            "FROM drift_windows WHERE device = ? AND variant = ? AND enough_data = 1 "
            "ORDER BY end DESC LIMIT ?",
            (device, variant, n),
        ).fetchall()
        if len(rows) < n:
            return None
        for r in rows:
            value, ref = r["value"], r["ref"]
            if not all(isinstance(x, (int, float)) for x in (value, ref)):
                return None  # an uncalibrated model, or an older agent: no estimate
            if value > ref - self.config.estimated_drop:
                return None
        return DriftEvidence(
            "estimated_performance", [], min((r["start"] or r["end"]) for r in rows)
        )

    def scope_devices(self, drifting: list[str], running: list[str]) -> list[str]:
        """The devices a retrained model is for (and A/B tested on)."""
        scope = self.config.scope
        if scope == "device":
            return drifting
        if scope == "fleet":
            return sorted(running)
        groups = {g for d in drifting for g in self._groups(d)}
        members = [d for d in running if groups & self._groups(d)]
        return sorted(set(members) | set(drifting))

    def _groups(self, device: str) -> set[str]:
        return set((self.db.device(device) or {}).get("groups") or [])

    def _message(self, variant: str, drifting: dict[str, DriftEvidence], scope: list[str]) -> str:
        reasons = []
        for device, why in sorted(drifting.items()):
            if why.signal == "concept":
                reasons.append(f"{device}: error rate rose (concept-drift detector fired)")
            elif why.signal == "estimated_performance":
                cfg = self.config
                reasons.append(
                    f"{device}: estimated {cfg.estimated_metric} (no labels) at least "
                    f"{cfg.estimated_drop:g} below training in {cfg.consecutive_windows} "
                    "consecutive windows"
                )
            else:
                feats = ", ".join(why.features) or "model output"
                n = self.config.consecutive_windows
                reasons.append(f"{device}: {n} consecutive drifting windows ({feats})")
        return (
            f"{variant} is drifting: "
            + "; ".join(reasons)
            + f". Retraining scope {self.config.scope}: {', '.join(scope)}"
        )
