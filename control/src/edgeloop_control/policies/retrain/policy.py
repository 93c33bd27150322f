"""Drift -> retraining: the policy that notices the world changed and reacts.

Per model with a champion, every tick:

1. **Signal.** A device is drifting when its last ``consecutive_windows``
   drift windows of the champion variant (with enough data) all flag the
   configured signals: ``features`` (dataset-level decision after the
   multiple-testing correction), ``output`` (prediction drift), ``concept``
   (the error-rate detector on labelled outcomes).
2. **Episode.** The first such device opens a drift episode (event
   ``drift_detected``); the scope (device / group / fleet) decides which devices
   the new model will be tested on.
3. **Data.** Wait until ``min_samples`` labelled captured samples since the
   episode began exist in the feature store (event ``waiting_for_labels`` once).
4. **Retrain** with the champion's configuration (algorithm, parameters,
   features, target) on the recent labelled data plus ``reference_share`` of
   rows from the champion's training view; evaluate on the most recent holdout;
   register with lineage naming the drift event; the champion gate decides
   whether it becomes ``challenger``.
5. **Experiment.** Start an A/B test of champion vs challenger on the scope's
   devices. A cooldown then keeps the policy quiet.

State lives in SQLite (``retrain_state``), so a daemon restart resumes.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from edgeloop_control.featurestore import FeatureStore, FeatureStoreError
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace

log = logging.getLogger("edgeloop.control.retrain")

SCHEMA = """
CREATE TABLE IF NOT EXISTS retrain_state (
    model TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    episode_start REAL,
    drift_event INTEGER,
    devices TEXT,
    note TEXT,
    last_retrain REAL,
    updated_at REAL NOT NULL
);
"""

# Added after the first release: ALTER TABLE brings an older database along.
_LATER_COLUMNS = {
    "failures": "INTEGER NOT NULL DEFAULT 0",
    "retry_at": "REAL",
    "last_error": "TEXT",
}

SIGNALS = ("features", "output", "concept")


class RetrainFailed(ValueError):
    """Training refused the episode's data (reported once, retried with back-off)."""


@dataclass(frozen=True)
class RetrainConfig:
    enabled: bool = True
    signals: tuple[str, ...] = ("features", "output", "concept")
    consecutive_windows: int = 3
    min_samples: int = 400
    cooldown_s: float = 600.0
    scope: str = "fleet"  # device | group | fleet
    reference_share: float = 0.3
    holdout: float = 0.25
    gate_metric: str = "accuracy"
    gate_margin: float = 0.0
    # A failing step is retried after retry_base_s, doubling per failure up to
    # retry_max_s: a broken episode must not retrain (and log) every tick.
    retry_base_s: float = 30.0
    retry_max_s: float = 3600.0

    def __post_init__(self) -> None:
        bad = [s for s in self.signals if s not in SIGNALS]
        if bad or not self.signals:
            raise ValueError(f"retrain.signals must be a non-empty subset of {SIGNALS}, got {bad}")
        if self.scope not in ("device", "group", "fleet"):
            raise ValueError(f"retrain.scope must be device, group or fleet, got {self.scope!r}")
        if self.consecutive_windows < 1 or self.min_samples < 1:
            raise ValueError("retrain.consecutive_windows and min_samples must be >= 1")
        if not 0.0 <= self.reference_share < 1.0:
            raise ValueError(
                f"retrain.reference_share must be in [0, 1), got {self.reference_share}"
            )
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"retrain.holdout must be in (0, 1), got {self.holdout}")
        if not 0.0 < self.retry_base_s <= self.retry_max_s:
            raise ValueError(
                "retrain.retry_base_s must be positive and at most retry_max_s, got "
                f"{self.retry_base_s} and {self.retry_max_s}"
            )

    @classmethod
    def from_workspace(cls, ws: Workspace) -> RetrainConfig:
        raw = dict(ws.section("retrain"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"[retrain] in edgeloop.toml has unknown keys: {', '.join(unknown)}")
        if "signals" in raw:
            raw["signals"] = tuple(raw["signals"])
        return cls(**raw)


class RetrainPolicy:
    name = "retrain"

    def __init__(
        self,
        ws: Workspace,
        db: ControlDB,
        store: FeatureStore,
        *,
        experiments: Any = None,
        config: RetrainConfig | None = None,
    ) -> None:
        self.ws = ws
        self.db = db
        self.store = store
        self.experiments = experiments
        self.config = config or RetrainConfig.from_workspace(ws)
        self.db.conn.executescript(SCHEMA)
        have = {r[1] for r in self.db.conn.execute("PRAGMA table_info(retrain_state)")}
        for column, decl in _LATER_COLUMNS.items():
            if column not in have:
                self.db.conn.execute(f"ALTER TABLE retrain_state ADD COLUMN {column} {decl}")
        self._registry: Any = None

    # -- state -------------------------------------------------------------------

    def state(self, model: str) -> dict[str, Any]:
        row = self.db.conn.execute(
            "SELECT * FROM retrain_state WHERE model = ?", (model,)
        ).fetchone()
        if row is None:
            return {
                "model": model,
                "state": "idle",
                "episode_start": None,
                "drift_event": None,
                "devices": [],
                "note": None,
                "last_retrain": None,
                "failures": 0,
                "retry_at": None,
                "last_error": None,
            }
        out = dict(row)
        out["devices"] = json.loads(out["devices"] or "[]")
        return out

    def _save(self, st: dict[str, Any]) -> None:
        self.db.conn.execute(
            "INSERT INTO retrain_state(model, state, episode_start, drift_event, devices, note, "
            "last_retrain, failures, retry_at, last_error, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(model) DO UPDATE SET "
            "state=excluded.state, episode_start=excluded.episode_start, "
            "drift_event=excluded.drift_event, devices=excluded.devices, note=excluded.note, "
            "last_retrain=excluded.last_retrain, failures=excluded.failures, "
            "retry_at=excluded.retry_at, last_error=excluded.last_error, "
            "updated_at=excluded.updated_at",
            (
                st["model"],
                st["state"],
                st["episode_start"],
                st["drift_event"],
                json.dumps(st["devices"]),
                st["note"],
                st["last_retrain"],
                st.get("failures") or 0,
                st.get("retry_at"),
                st.get("last_error"),
                time.time(),
            ),
        )

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from edgeloop_control.registry import Registry

            self._registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
        return self._registry

    # -- the policy --------------------------------------------------------------

    def tick(self, now: float) -> None:
        if not self.config.enabled or not self.ws.registry_dir.joinpath(".dvc").is_dir():
            return
        for model in self.registry.names():
            champion = self.registry.stages(model).get("champion")
            if not champion:
                continue
            retry_at = self.state(model)["retry_at"]
            if retry_at is not None and now < retry_at:
                continue
            try:
                self._tick_model(model, f"{model}@{champion}", now)
            except Exception as exc:  # a bad episode must not stop the other models
                self._failed(model, exc, now)

    def _failed(self, model: str, exc: BaseException, now: float) -> None:
        """Back off exponentially; record one event per distinct failure."""
        st = self.state(model)
        failures = int(st["failures"] or 0) + 1
        delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** (failures - 1))
        expected = isinstance(exc, RetrainFailed)  # the data, not a bug
        reason = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        if reason != st["last_error"]:
            message = (
                f"{model}: retraining failed ({reason}); "
                f"retrying with back-off, next try in {delay:.0f} s"
            )
            self.db.add_event(
                "retrain_failed",
                message,
                subject=model,
                data={"reason": reason, "failures": failures, "retry_in_s": delay},
            )
            log.error(message, exc_info=not expected)
        else:
            log.debug("%s: retraining failed again (%d times): %s", model, failures, reason)
        st.update(failures=failures, retry_at=now + delay, last_error=reason, note=reason)
        self._save(st)

    def _tick_model(self, model: str, variant: str, now: float) -> None:
        st = self.state(model)
        if st["state"] == "experimenting":
            if self.experiments is not None and self.experiments_running(model):
                return
            st.update(state="idle", episode_start=None, drift_event=None, devices=[], note=None)
            self._save(st)
        cfg = self.config
        if st["last_retrain"] and now - st["last_retrain"] < cfg.cooldown_s:
            return
        running = self.devices_running(variant)
        drifting = {d: why for d in running if (why := self.drift_evidence(d, variant))}
        if st["state"] == "idle":
            if not drifting:
                return
            start = min(why["since"] for why in drifting.values())
            scope = self.scope_devices(sorted(drifting), running)
            reasons = []
            for device, why in sorted(drifting.items()):
                if why["signal"] == "concept":
                    reasons.append(f"{device}: error rate rose (concept-drift detector fired)")
                else:
                    feats = ", ".join(why["features"]) or "model output"
                    n = cfg.consecutive_windows
                    reasons.append(f"{device}: {n} consecutive drifting windows ({feats})")
            message = (
                f"{variant} is drifting: "
                + "; ".join(reasons)
                + f". Retraining scope {cfg.scope}: {', '.join(scope)}"
            )
            event = self.db.add_event(
                "drift_detected",
                message,
                subject=model,
                data={"variant": variant, "devices": drifting, "scope": scope},
            )
            log.warning(message)
            st.update(
                state="collecting", episode_start=start, drift_event=event, devices=scope, note=None
            )
            self._save(st)
        if st["state"] != "collecting":
            return
        frame = self.labelled_since(model, st["episode_start"], st["devices"])
        if len(frame) < cfg.min_samples:
            note = f"waiting for labels: {len(frame)} of {cfg.min_samples} labelled samples"
            if st["note"] is None:
                self.db.add_event("waiting_for_labels", f"{model}: {note}", subject=model)
            st["note"] = note
            self._save(st)
            return
        self._retrain(model, variant, st, frame, now)

    def experiments_running(self, model: str) -> bool:
        running = getattr(self.experiments, "running_for", None)
        if running is not None:
            return bool(running(model))
        return any(
            e.get("model") == model and e.get("state") == "running"
            for e in self.experiments.status()
        )

    # -- evidence ------------------------------------------------------------------

    def devices_running(self, variant: str) -> list[str]:
        out = []
        for device, doc in self.db.all_desired().items():
            if any(
                m.get("variant") == variant and m.get("role") == "serve" and m.get("weight", 0) > 0
                for m in doc.get("models", [])
            ):
                out.append(device)
        return out

    def drift_evidence(self, device: str, variant: str) -> dict[str, Any] | None:
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
                return {"signal": "data", "features": features, "since": since}
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
                    return {"signal": "concept", "features": [], "since": older["ts"]}
        return None

    def scope_devices(self, drifting: list[str], running: list[str]) -> list[str]:
        scope = self.config.scope
        if scope == "device":
            return drifting
        if scope == "fleet":
            return sorted(running)
        groups = {g for d in drifting for g in ((self.db.device(d) or {}).get("groups") or [])}
        members = [
            d for d in running if groups & set((self.db.device(d) or {}).get("groups") or [])
        ]
        return sorted(set(members) | set(drifting))

    def labelled_since(self, model: str, since: float | None, devices: list[str]) -> pd.DataFrame:
        try:
            frame = self.store.captured_training_frame(
                model, since=pd.Timestamp(since, unit="s", tz="UTC") if since else None
            )
        except FeatureStoreError:
            return pd.DataFrame()
        if devices and not frame.empty:
            frame = frame[frame["device"].isin(devices)]
        return frame

    # -- retraining -----------------------------------------------------------------

    def _retrain(
        self, model: str, variant: str, st: dict[str, Any], recent: pd.DataFrame, now: float
    ) -> None:
        from edgeloop_control.jobs.train_and_register import train_and_register
        from edgeloop_control.training import TrainConfig, TrainingError
        from edgeloop_control.training.columns import FeatureKind, coerce_to_kinds

        cfg = self.config
        champion = self.registry.get(variant)
        meta = champion.metadata
        target = meta.get("target") or "label"
        features = list(meta.get("features") or [])
        categorical = set(meta.get("categorical_features") or [])
        # Captured samples arrive as JSON (a bool feature as 0.0/1.0, a category
        # code as a number): each source is brought to the champion's schema
        # before the join, so the columns keep one kind.
        kinds: dict[str, FeatureKind] = {
            f: "string" if f in categorical else "float" for f in features
        }
        frame = coerce_to_kinds(
            recent[[*features, "label", "ts"]].rename(columns={"label": target}), kinds
        )
        reference_rows = 0
        view = meta.get("feature_view")
        if view and cfg.reference_share > 0:
            want = math.ceil(len(frame) * cfg.reference_share / (1 - cfg.reference_share))
            try:
                vv = self.store.view(view)
                ref = self.store.read(
                    vv.ref, columns=[c for c in [*features, target] if c != vv.timestamp]
                )
                ref = ref.tail(want).rename(columns={vv.timestamp: "ts"})[[*features, target, "ts"]]
                ref = coerce_to_kinds(ref, kinds)
                reference_rows = len(ref)
                frame = pd.concat([ref, frame], ignore_index=True)
            except (FeatureStoreError, KeyError) as exc:
                log.warning("no reference rows from %s: %s", view, exc)
        frame[target] = _coerce_labels(frame[target])
        if not st["failures"]:  # a retry after a failure is not news
            self.db.add_event(
                "retrain",
                f"retraining {model} like {variant} ({meta.get('algorithm')}) on "
                f"{len(recent)} recent "
                f"labelled samples + {reference_rows} reference rows",
                subject=model,
                data={
                    "cause_event": st["drift_event"],
                    "recent": len(recent),
                    "reference": reference_rows,
                },
            )
        config = TrainConfig(
            target=target,
            features=features,
            algo=meta.get("algorithm") or "rf",
            timestamp="ts",
            holdout=cfg.holdout,
            seed=0,
        )
        try:
            outcome = train_and_register(
                self.ws,
                name=model,
                config=config,
                frame=frame,
                lineage={
                    "parent": variant,
                    "cause": f"drift_event:{st['drift_event']}",
                    "devices": st["devices"],
                },
                stage="auto",
                gate_metric=cfg.gate_metric,
                gate_margin=cfg.gate_margin,
                extra_metadata={
                    "trigger": "drift",
                    "drift_event": st["drift_event"],
                    "feature_view": meta.get("feature_view"),
                },
            )
        except (TrainingError, ValueError) as exc:
            # Not enough or unusable data: the episode stays open and is retried
            # with back-off (more labels may arrive), see _failed().
            raise RetrainFailed(str(exc)) from exc
        st.update(failures=0, retry_at=None, last_error=None)
        m = outcome.result.metrics
        self.db.add_event(
            "registered",
            f"{outcome.version.ref} registered ({cfg.gate_metric} "
            f"{m.get(cfg.gate_metric, float('nan')):.3f} on the recent holdout) "
            f"stage {outcome.stage or 'none'}; champion gate: "
            f"{(outcome.gate or {}).get('reason', 'n/a')}",
            subject=model,
            data=outcome.to_dict(),
        )
        self._registry = None  # new tags: re-read
        if outcome.stage == "challenger" and self.experiments is not None:
            try:
                exp = self.experiments.start(
                    model,
                    variant,
                    outcome.version.ref,
                    st["devices"],
                    weight=None,
                    cause=f"drift_event:{st['drift_event']}",
                )
            except ValueError as exc:  # ExperimentError: devices busy, ...
                self.db.add_event(
                    "ab_not_started", f"{outcome.version.ref} not A/B tested: {exc}", subject=model
                )
                st.update(state="idle", last_retrain=now, note=str(exc))
                self._save(st)
                return
            st.update(
                state="experimenting",
                last_retrain=now,
                note=f"experiment {exp.get('id') if isinstance(exp, dict) else exp}",
            )
        else:
            st.update(
                state="idle",
                last_retrain=now,
                note="challenger not better than the champion on recent data",
            )
        self._save(st)


def _coerce_labels(series: pd.Series) -> pd.Series:
    # Labels arrive as JSON values; integral floats (1.0) are classes 1.
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().all() and (numeric == numeric.round()).all():
        return numeric.astype("int64")
    return series
