"""A small real world for the retrain policy: workspace, registry with a champion, feature
store, control database, and the fleet's evidence written where the daemon writes it.

The champion is a logistic regression on two sensor readings, trained by the real
pipeline and registered in the real git+DVC registry once per test module; each test
works on a copy of that workspace, so a test costs its ticks, not a training.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.fleet.captured import ingest_messages
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.signing import ensure_keypair
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.jobs.train_and_register import train_and_register
from edgeloop_control.policies.retrain.policy import Experiments, RetrainConfig, RetrainPolicy
from edgeloop_control.registry import Registry
from edgeloop_control.training import TrainConfig
from tests.pgserver import follow_engine

MODEL = "sensor"
CHAMPION = "sensor@v1"
# After the champion's view was ingested (its rows carry the ingest time): recent samples
# must be the most recent rows, or the retraining holdout would be the reference rows.
T0 = float(int(time.time())) + 3600.0


def readings(
    n: int, seed: int, *, single_class: bool = False, flipped: bool = False
) -> pd.DataFrame:
    """Two readings and whether the part failed; separable enough for logreg to learn.

    ``flipped``: the world changed and the old rule is now wrong (the champion fails the
    champion gate on such data, so a retrained model becomes challenger).
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0.0, 1.0, n).round(4)
    x2 = rng.normal(0.0, 1.0, n).round(4)
    label = (x1 + 0.5 * x2 + rng.normal(0.0, 0.3, n) > 0).astype(int)
    if flipped:
        label = 1 - label
    if single_class:
        label[:] = 1
    return pd.DataFrame({"reading_id": np.arange(n), "x1": x1, "x2": x2, "failed": label})


def build_template(root: Path) -> Path:
    """A workspace whose registry holds ``sensor@v1`` as champion, trained on view ``readings``."""
    ws = Workspace.init(root)
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    Registry.for_workspace(ws)
    FeatureStore(ws.feature_store_dir).ingest(
        readings(300, seed=1), "readings", entity="reading_id"
    )
    outcome = train_and_register(
        ws,
        name=MODEL,
        config=TrainConfig(target="failed", algo="logreg", holdout=0.25, seed=0),
        view="readings",
        stage="auto",
    )
    assert outcome.version.ref == CHAMPION and outcome.stage == "champion"
    return ws.root


@dataclass
class RetrainEnv:
    """One test's copy of the world; ``restart()`` is a daemon restart (new DB connection)."""

    ws: Workspace
    db: ControlDB
    fs: FeatureStore
    _dbs: list[ControlDB] = field(default_factory=list)
    _samples: int = 0

    @classmethod
    def copy_of(cls, template: Path, into: Path) -> RetrainEnv:
        shutil.copytree(template, into, symlinks=True)
        follow_engine(into)
        ws = Workspace.open(into)
        db = ControlDB(ws.control_db)
        return cls(ws, db, FeatureStore(ws.feature_store_dir), [db])

    def close(self) -> None:
        for db in self._dbs:
            db.close()

    def restart(self) -> None:
        self.db = ControlDB(self.ws.control_db)
        self._dbs.append(self.db)
        self.fs = FeatureStore(self.ws.feature_store_dir)

    def policy(self, experiments: Experiments | None = None, **config: Any) -> RetrainPolicy:
        return RetrainPolicy(
            self.ws, self.db, self.fs, experiments=experiments, config=RetrainConfig(**config)
        )

    @property
    def registry(self) -> Registry:
        return Registry.for_workspace(self.ws, create=False, sync_remote=False)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return self.db.events(kind=kind)

    def all_events(self) -> list[str]:
        return [e["kind"] for e in self.db.events(limit=1000)]  # oldest first

    # -- what the fleet reports, written where fleet/ingest.py writes it -------------------

    def serve(
        self,
        device: str,
        variant: str = CHAMPION,
        *,
        weight: float = 100,
        role: str = "serve",
        groups: list[str] | None = None,
    ) -> None:
        model = {"name": variant.split("@")[0], "variant": variant, "role": role, "weight": weight}
        self.db.set_desired(device, {"revision": 1, "models": [model]})
        self.db.upsert_device(device, groups=groups or [])

    def windows(
        self,
        device: str,
        end: float,
        flags: list[tuple[int, int]],
        *,
        variant: str = CHAMPION,
        enough: int = 1,
        features: list[str] | None = None,
    ) -> None:
        """Drift windows ending at ``end``, one a minute, oldest first: (dataset, output) flags."""
        for i, (dataset, output) in enumerate(flags):
            stop = end - (len(flags) - 1 - i) * 60
            self.db.conn.execute(
                "INSERT INTO drift_windows(report_id, idx, device, variant, version, start, end, "
                "n, enough_data, dataset_drift, output_drift, drifted, doc) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'{}')",
                (
                    f"{device}:{stop}",
                    i,
                    device,
                    variant,
                    variant.split("@")[1],
                    stop - 60,
                    stop,
                    500,
                    enough,
                    dataset,
                    output,
                    json.dumps(features if features is not None else ["x1"] if dataset else []),
                ),
            )

    def concept(self, device: str, reports: list[tuple[float, int]]) -> None:
        """Concept-drift reports: (ts, detections so far)."""
        for ts, detections in reports:
            self.db.conn.execute(
                "INSERT INTO concept_drift(report_id, variant, device, ts, n, error_rate, drift, "
                "detections) VALUES (?,?,?,?,?,?,?,?)",
                (f"{device}:c{ts}", CHAMPION, device, ts, 100, 0.2, 0, detections),
            )

    def capture(
        self, device: str, rows: pd.DataFrame, start: float, *, variant: str = CHAMPION
    ) -> None:
        """Labelled samples as agents send them (a sample, then its label 30 s later)."""
        model, version = variant.split("@")
        messages: list[tuple[str, bytes]] = []
        for i, row in enumerate(rows.itertuples(index=False)):
            self._samples += 1
            sid = f"{device}:ab12:{self._samples:06d}"
            sample = {
                "sample_id": sid,
                "device": device,
                "ts": start + i,
                "request_id": f"r-{self._samples}",
                "model": model,
                "version": version,
                "variant": variant,
                "features": {"x1": float(row.x1), "x2": float(row.x2)},
                "prediction": 0,
                "label": None,
            }
            label = {
                "sample_id": sid,
                "request_id": f"r-{self._samples}",
                "device": device,
                "ts": start + i + 30,
                "label": int(row.failed),
            }
            messages.append((f"edgeloop/{device}/samples", json.dumps(sample).encode()))
            messages.append((f"edgeloop/{device}/labels", json.dumps(label).encode()))
        counts = ingest_messages(self.fs, messages)
        assert counts["samples"][0] == len(rows) and counts["labels"][0] == len(rows), counts
