"""One training run end to end: feature store -> model -> registry + tracking.

Used by ``edgeloop train`` and by the retraining policy. Order matters: the
tracking run is opened first so the registered version can point at it; the
parity gate (inside ``training.train``) refuses to produce anything
registrable; the champion gate decides whether the new version may become
``challenger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from edgeloop_agent.wire.names import check_model_name
from edgeloop_agent.wire.numeric import is_number
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.featurestore.writes import INGESTED_AT
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import ModelVersion, Registry
from edgeloop_control.tracking import (
    TAG_DATA_HASH,
    TAG_FEATURE_VIEW,
    TAG_FEATURE_VIEW_VERSION,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_REGISTRY_COMMIT,
    TAG_ROWS,
    TAG_SHA256,
    Tracker,
)
from edgeloop_control.training import (
    TrainConfig,
    TrainResult,
    compare_to_champion,
    fit,
    prepare,
)


@dataclass
class TrainOutcome:
    version: ModelVersion
    result: TrainResult
    run_id: str
    tracking_uri: str | None
    stage: str | None
    gate: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.version.ref,
            "sha256": self.version.sha256,
            "stage": self.stage,
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "metrics": self.result.metrics,
            "parity": self.result.parity,
            "champion_gate": self.gate,
            "rows": self.result.n_rows,
            "data_hash": self.result.data_hash,
            "notes": self.notes,
        }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    try:
        iso: str = pd.Timestamp(value).isoformat()  # pandas is untyped here (no stubs)
        return iso
    except (TypeError, ValueError):
        return str(value)


def registry_metadata(
    result: TrainResult, *, view: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    meta = result.meta.to_dict()
    return {
        "task": result.task,
        "algorithm": result.algo,
        "params": result.params,
        "target": result.config.target,
        "feature_view": view,
        "features": result.feature_names,
        "categorical_features": result.categorical_features,
        "classes": result.classes,
        "input_schema": {"features": meta["features"], "inputs": meta["inputs"]},
        "handles_missing": result.meta.handles_missing,
        "training_range": [_iso(v) for v in result.train_range] if result.train_range else None,
        "holdout_range": [_iso(v) for v in result.holdout_range] if result.holdout_range else None,
        "rows": result.n_rows,
        "rows_train": result.n_train,
        "rows_holdout": result.n_holdout,
        "split": "time" if result.time_based_holdout else "random",
        "data_hash": result.data_hash,
        "holdout_hash": result.holdout_hash,
        "metrics": result.metrics,
        "parity": result.parity,
        "opset": result.opset,
        "reference_profile": result.meta.profile,
        **extra,
    }


def train_and_register(
    ws: Workspace,
    *,
    name: str,
    config: TrainConfig,
    frame: pd.DataFrame | None = None,
    view: str | None = None,
    lineage: dict[str, Any] | None = None,
    stage: str = "auto",
    gate_metric: str = "f1",
    gate_margin: float = 0.0,
    extra_metadata: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Train on ``frame`` (or the feature view ``view``), register, track, gate.

    ``stage``: "auto" makes the first version champion and a later one
    challenger when it passes the champion gate; "none" assigns nothing;
    "champion"/"challenger" force that stage (the gate still runs and is recorded).
    """
    check_model_name("model name", name)
    view_ref = None
    view_name = None
    if frame is None:
        if view is None:
            raise ValueError("give a feature view or a data frame to train on")
        store = FeatureStore(ws.feature_store_dir)
        vv = store.view(view)
        view_ref, view_name = vv.ref, vv.name
        frame = store.read(vv.ref)
        exclude = [c for c in vv.entity if c != config.target]
        split = config.split
        if split == "auto" and vv.timestamp == INGESTED_AT and config.timestamp is None:
            # No event time: the ingest time says when rows were loaded, not when
            # they happened, so a "most recent" holdout would be meaningless.
            split = "random"
        if config.timestamp is None or exclude or split != config.split:
            config = TrainConfig(
                **{
                    **config.__dict__,
                    "timestamp": config.timestamp or vv.timestamp,
                    "exclude": sorted(set(config.exclude) | set(exclude)),
                    "split": split,
                }
            )
    registry = Registry.for_workspace(ws)
    tracker = Tracker.for_workspace(ws)
    notes: list[str] = []
    # The tag names docs/tracking.md lists: users search MLflow by them.
    tags = {
        TAG_MODEL: name,
        TAG_FEATURE_VIEW: view_name or "(frame)",
        TAG_FEATURE_VIEW_VERSION: view_ref or "(frame)",
        TAG_REGISTRY_COMMIT: registry.head_commit(),
    }
    # Every input error a user can fix is raised here, before a tracking run
    # exists: a wrong --target must not leave a FAILED run behind.
    prepared = prepare(frame, config)
    with tracker.start_run(mlflow_experiment=name, run_name=f"train-{name}", tags=tags) as run:
        result = fit(prepared)
        run.log_params(
            {
                "algo": result.algo,
                "task": result.task,
                "target": config.target,
                "seed": config.seed,
                "holdout": config.holdout,
                "split": "time" if result.time_based_holdout else "random",
                **_flat(result.params),
            }
        )
        run.log_metrics({k: float(v) for k, v in result.metrics.items() if is_number(v)})
        run.log_metrics({f"parity_{k}": float(v) for k, v in result.parity.items() if is_number(v)})
        run.set_tags({TAG_DATA_HASH: result.data_hash, TAG_ROWS: result.n_rows})
        run.log_artifact(result.onnx_bytes, "model.onnx")
        if result.meta.profile is not None:
            run.log_dict(result.meta.profile, "reference_profile.json")
        info = run.info

        gate = None
        champion_ref = registry.stages(name).get("champion") if name in registry.names() else None
        if champion_ref:
            champion = registry.get(f"{name}@{champion_ref}")
            comparison = compare_to_champion(
                result,
                registry.artifact_bytes(champion),
                result.holdout_frame,
                metric=gate_metric if result.task == "classification" else _regression(gate_metric),
                margin=gate_margin,
            )
            gate = {"champion": champion.ref, **comparison.to_dict()}
            run.log_metric("champion_gate_passed", 1.0 if comparison.passed else 0.0)

        lineage_doc = {
            "tracking_run_id": info.run_id,
            "tracking_uri": tracker.uri or "workspace",
            **(lineage or {}),
        }
        metadata = registry_metadata(
            result, view=view_ref, extra={"champion_gate": gate, **(extra_metadata or {})}
        )
        version = registry.register(name, result.onnx_bytes, metadata, lineage=lineage_doc)
        run.set_tags({TAG_MODEL_VERSION: version.ref, TAG_SHA256: version.sha256})

    assigned: str | None = None
    if stage == "auto":
        if champion_ref is None:
            assigned = "champion"
        elif gate and gate["passed"]:
            assigned = "challenger"
        else:
            notes.append(
                f"not made challenger: {gate['reason'] if gate else 'no champion gate ran'}"
            )
    elif stage in ("champion", "challenger"):
        assigned = stage
    if assigned:
        version = registry.promote(name, version.version, assigned)
    return TrainOutcome(version, result, info.run_id, tracker.uri, assigned, gate, notes)


def _regression(metric: str) -> str:
    return metric if metric in ("mae", "rmse", "r2") else "rmse"


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
