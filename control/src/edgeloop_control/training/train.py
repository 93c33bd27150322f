"""``train``: a frame and a config in, a verified, registrable ONNX model out.

Steps: validate the columns, drop rows without a target, put the rows in a
canonical order, split off the holdout, fit the pipeline on float32-exact values,
profile the holdout for drift monitoring, export to ONNX with the metadata
embedded, then refuse the result unless onnxruntime reproduces scikit-learn on
the holdout (:func:`check_parity`). Metrics come from the ONNX outputs.

Reproducibility: rows are sorted by (timestamp, row hash) before anything else,
so the split, the fit and the bytes depend on the *content* of the frame, not on
its row order or index; with the same seed, config and library versions two runs
give identical metrics and identical ONNX bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pandas as pd
import skl2onnx
import sklearn
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from edgeloop_agent.wire.modelmeta import ModelMeta
from edgeloop_agent.wire.profile import build_reference_profile
from edgeloop_control.training.calibration import fit_calibration
from edgeloop_control.training.checks import (
    check_finite,
    check_frame,
    check_training_features,
    resolve_features,
    timestamp_values,
)
from edgeloop_control.training.columns import (
    STRING_MISSING,
    FeatureKind,
    feature_frame,
    infer_feature_kind,
    is_boolean_column,
)
from edgeloop_control.training.config import TrainConfig
from edgeloop_control.training.errors import TrainingError
from edgeloop_control.training.export import (
    TARGET_OPSET,
    embed_calibration,
    export_onnx,
    opset_of,
)
from edgeloop_control.training.hashing import frame_hash, row_hashes
from edgeloop_control.training.metrics import evaluate
from edgeloop_control.training.parity import check_parity
from edgeloop_control.training.pipelines import (
    build_pipeline,
    estimator_params,
    snap_thresholds_to_float32,
)
from edgeloop_control.training.predictor import OnnxPredictor
from edgeloop_control.training.split import holdout_split
from edgeloop_control.training.target import prepare_target

# Share of the standardised numeric features' variance the drift PCA keeps (docs/drift.md).
PCA_VARIANCE = 0.9


# eq=False: a result holds a DataFrame and a fitted pipeline, neither of which
# compares meaningfully with ==; compare onnx_bytes or data_hash instead.
@dataclass(frozen=True, eq=False)
class TrainResult:
    onnx_bytes: bytes
    meta: ModelMeta
    # Held-out metrics from the ONNX outputs, plus "n" and "holdout_hash".
    metrics: dict[str, Any]
    parity: dict[str, Any]
    pipeline: Pipeline
    config: TrainConfig
    task: str
    algo: str
    feature_names: list[str]
    numeric_features: list[str]
    categorical_features: list[str]
    classes: list[Any] | None
    data_hash: str
    holdout_hash: str
    n_rows: int  # rows used (train + holdout)
    n_train: int
    n_holdout: int
    n_dropped: int  # rows left out because the target was missing
    time_based_holdout: bool
    train_range: tuple[Any, Any] | None
    holdout_range: tuple[Any, Any] | None
    params: dict[str, Any]
    opset: dict[str, int]
    # The held-out rows with every original column, in canonical order: hand it to
    # compare_to_champion to score a champion on exactly these rows.
    holdout_frame: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the bytes, the pipeline and the frame; JSON-serialisable."""
        return {
            "task": self.task,
            "algo": self.algo,
            "target": self.config.target,
            "features": self.feature_names,
            "categorical_features": self.categorical_features,
            "classes": self.classes,
            "metrics": self.metrics,
            "parity": self.parity,
            "data_hash": self.data_hash,
            "holdout_hash": self.holdout_hash,
            "n_rows": self.n_rows,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "n_dropped": self.n_dropped,
            "time_based_holdout": self.time_based_holdout,
            "train_range": list(self.train_range) if self.train_range else None,
            "holdout_range": list(self.holdout_range) if self.holdout_range else None,
            "params": self.params,
            "seed": self.config.seed,
            "opset": self.opset,
            "onnx_size": len(self.onnx_bytes),
            "timings": self.timings,
        }


def train(df: pd.DataFrame, config: TrainConfig) -> TrainResult:
    """Fit, export, verify and evaluate one model; raises :class:`TrainingError`.

    scikit-learn's thread pools are capped at ``config.n_threads`` for the whole run.
    """
    return fit(prepare(df, config))


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A frame that passed every check that needs no fitting, split and typed.

    :func:`prepare` raises every input error a user can fix (unknown columns,
    a single class, bad timestamps, non-finite values...) before anything is
    fitted, so callers can refuse bad input before opening a tracking run.
    """

    config: TrainConfig
    features: list[str]
    numeric: list[str]
    categorical: list[str]
    task: str
    labelled: pd.DataFrame
    n_dropped: int
    data_hash: str
    split: Any
    holdout_frame: pd.DataFrame
    x_train: pd.DataFrame
    y_train: np.ndarray
    x_holdout: pd.DataFrame
    started: float
    y_holdout: np.ndarray | None = None


def prepare(df: pd.DataFrame, config: TrainConfig) -> PreparedData:
    """Validate, order and split ``df``; raises :class:`TrainingError`."""
    started = time.perf_counter()
    check_frame(df)
    features = resolve_features(df, config)

    labelled = df[df[config.target].notna()]
    n_dropped = len(df) - len(labelled)
    if len(labelled) == 0:
        raise TrainingError(f"target {config.target!r} has no non-missing values")
    y, task = prepare_target(labelled[config.target], config.target, config.task)
    if task == "classification" and np.unique(y).size < 2:
        raise TrainingError(
            f"target {config.target!r} has a single class {_plain(y[0])!r}; "
            "classification needs two"
        )

    kinds: dict[str, FeatureKind] = {f: infer_feature_kind(labelled[f], f) for f in features}
    numeric = [f for f in features if kinds[f] == "float"]
    categorical = [f for f in features if kinds[f] == "string"]
    timestamps = (
        timestamp_values(labelled[config.timestamp], config.timestamp) if config.timestamp else None
    )

    used_columns = [*features, config.target] + ([config.timestamp] if config.timestamp else [])
    used = labelled[used_columns]
    data_hash = frame_hash(used)
    # Canonical row order: by timestamp, then by row content. The split, the
    # bootstrap samples and therefore the bytes no longer depend on how the frame
    # happened to be sorted.
    hashes = row_hashes(used)
    order = (
        np.lexsort((hashes, timestamps))
        if timestamps is not None
        else np.argsort(hashes, kind="stable")
    )
    labelled = labelled.iloc[order]
    y = y[order]
    if timestamps is not None:
        timestamps = timestamps[order]

    split = holdout_split(
        len(labelled),
        float(config.holdout),
        seed=config.seed,
        timestamps=None if config.split == "random" else timestamps,
        labels=y if task == "classification" else None,
    )
    train_rows = labelled.iloc[split.train]
    holdout_frame = labelled.iloc[split.holdout]
    y_train = y[split.train]
    if task == "classification" and np.unique(y_train).size < 2:
        raise TrainingError(
            f"target {config.target!r} has a single class {_plain(y_train[0])!r} in the "
            f"{len(y_train)} training rows; classification needs two"
        )
    x_train = feature_frame(train_rows, numeric, categorical)
    check_training_features(x_train, numeric, categorical, config.max_categories)
    x_holdout = feature_frame(holdout_frame, numeric, categorical)
    check_finite(x_holdout, numeric, "held-out")
    return PreparedData(
        config=config,
        features=features,
        numeric=numeric,
        categorical=categorical,
        task=task,
        labelled=labelled,
        n_dropped=n_dropped,
        data_hash=data_hash,
        split=split,
        holdout_frame=holdout_frame,
        x_train=x_train,
        y_train=y_train,
        x_holdout=x_holdout,
        started=started,
        y_holdout=y[split.holdout],
    )


def fit(prepared: PreparedData) -> TrainResult:
    """Fit, export, verify and evaluate a :func:`prepare`-d frame."""
    with threadpool_limits(limits=prepared.config.n_threads):
        return _fit(prepared)


def _fit(p: PreparedData) -> TrainResult:
    config = p.config
    features = p.features
    numeric = p.numeric
    categorical = p.categorical
    task = p.task
    labelled = p.labelled
    n_dropped = p.n_dropped
    data_hash = p.data_hash
    split = p.split
    holdout_frame = p.holdout_frame
    x_train = p.x_train
    y_train = p.y_train
    x_holdout = p.x_holdout
    started = p.started

    pipeline = build_pipeline(
        config.algo, task, len(numeric), len(categorical), seed=config.seed, params=config.params
    )
    fit_started = time.perf_counter()
    try:
        pipeline.fit(x_train, y_train)
    except ValueError as exc:
        raise TrainingError(f"fitting {type(pipeline[-1]).__name__} failed: {exc}") from exc
    snap_thresholds_to_float32(pipeline)
    fit_s = time.perf_counter() - fit_started
    profile = _reference_profile(pipeline, x_holdout, numeric, task, categorical)
    params = estimator_params(pipeline)
    train_range = _range(labelled, config.timestamp, split.train)
    holdout_range = _range(labelled, config.timestamp, split.holdout)
    extra = {
        "target": config.target,
        "timestamp": config.timestamp,
        "algo": config.algo,
        "estimator": type(pipeline[-1]).__name__,
        "params": params,
        "seed": config.seed,
        "data_hash": data_hash,
        "n_train": int(split.train.size),
        "n_holdout": int(split.holdout.size),
        "holdout": "time" if split.time_based else "random",
        "train_range": list(train_range) if train_range else None,
        "holdout_range": list(holdout_range) if holdout_range else None,
        "string_missing": STRING_MISSING,
        "opset": dict(TARGET_OPSET),
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
        },
    }
    export_started = time.perf_counter()
    onnx_bytes = export_onnx(
        pipeline,
        features,
        categorical,
        boolean_features=[f for f in numeric if is_boolean_column(labelled[f])],
        profile=profile,
        extra=extra,
        doc_string=f"edgeloop {config.algo} {task} model for target {config.target!r}",
    )
    if task == "classification" and p.y_holdout is not None:
        proba = OnnxPredictor(onnx_bytes).predict(holdout_frame).probabilities
        assert proba is not None  # a classifier's prediction has probabilities
        calibration = fit_calibration(
            proba, p.y_holdout, list(pipeline.classes_), config.calibration
        )
        if calibration is not None:
            onnx_bytes = embed_calibration(onnx_bytes, calibration)
    export_s = time.perf_counter() - export_started

    parity_started = time.perf_counter()
    predictor = OnnxPredictor(onnx_bytes)
    parity = check_parity(pipeline, predictor, holdout_frame)
    parity_s = time.perf_counter() - parity_started

    metrics: dict[str, Any] = evaluate(predictor, holdout_frame, config.target)
    holdout_hash = frame_hash(holdout_frame)
    metrics["holdout_hash"] = holdout_hash
    classes = list(predictor.meta.classes) if predictor.meta.classes is not None else None
    return TrainResult(
        onnx_bytes=onnx_bytes,
        meta=predictor.meta,
        metrics=metrics,
        parity=parity.to_dict(),
        pipeline=pipeline,
        config=config,
        task=task,
        algo=config.algo,
        feature_names=list(features),
        numeric_features=numeric,
        categorical_features=categorical,
        classes=classes,
        data_hash=data_hash,
        holdout_hash=holdout_hash,
        n_rows=len(labelled),
        n_train=int(split.train.size),
        n_holdout=int(split.holdout.size),
        n_dropped=n_dropped,
        time_based_holdout=split.time_based,
        train_range=train_range,
        holdout_range=holdout_range,
        params=params,
        opset=opset_of(onnx_bytes),
        holdout_frame=holdout_frame,
        timings={
            "fit_s": fit_s,
            "export_s": export_s,
            "parity_s": parity_s,
            "total_s": time.perf_counter() - started,
        },
    )


def _reference_profile(
    pipeline: Pipeline,
    x_holdout: pd.DataFrame,
    numeric: list[str],
    task: str,
    categorical: list[str] | tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """Drift reference from the held-out rows.

    The holdout, not the training rows: its model outputs are out-of-sample (a
    random forest is close to certain on its own training rows, which would make
    every live window look drifted) and, with a time-based split, it is the
    most recent data, the closest to what devices will see next.
    """
    if not numeric:
        return None  # the profile format needs at least one numeric feature
    if task == "classification":
        proba = pipeline.predict_proba(x_holdout)
        output = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    else:
        output = pipeline.predict(x_holdout)
    # Categorical values exactly as the ONNX string input gets them (missing is
    # STRING_MISSING, one more category), so live counts fall in the same buckets; a PCA of
    # the numeric features for correlation drift (none below MIN_PCA_ROWS holdout rows).
    return build_reference_profile(
        x_holdout[numeric].to_numpy(dtype=np.float64),
        numeric,
        np.asarray(output, np.float64),
        categorical={name: x_holdout[name].astype(str).tolist() for name in categorical},
        pca_variance=PCA_VARIANCE,
    )


def _range(
    frame: pd.DataFrame, column: str | None, positions: np.ndarray
) -> tuple[Any, Any] | None:
    if column is None:
        return None
    values = frame[column].iloc[positions]
    if not (
        pd.api.types.is_numeric_dtype(values.dtype)
        or pd.api.types.is_datetime64_any_dtype(values.dtype)
    ):
        values = pd.to_datetime(values, utc=True)  # parsed as _timestamp_values does
    return (_plain(values.min()), _plain(values.max()))


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
