"""Held-out metrics, computed from a model's ONNX outputs.

Metrics are computed on what onnxruntime returns, not on the scikit-learn
pipeline: that is the artifact that ships, and it is the only form in which an
older champion still exists.

Classification: accuracy; F1 of the positive class (``classes[1]``, the larger
label) for binary tasks, macro F1 otherwise; ROC AUC (binary, or one-vs-rest macro
for multiclass) and log loss, both ``None`` when undefined on the held-out rows (a
single class present, or a class the model does not know). Regression: MAE,
RMSE, R^2.

ROC AUC is a rank statistic and sees float32 noise: rows whose scikit-learn
probabilities tie (or nearly tie) can come out of onnxruntime in either order.
Measured on forests of 7-60 trees and 500 rows, the ONNX AUC was within 1.4e-4 of
the float64 one. Champion and challenger are scored the same way, so the
comparison stays fair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from edgeloop_control.training.errors import InputError
from edgeloop_control.training.predictor import OnnxPredictor, Prediction
from edgeloop_control.training.target import prepare_target

CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("mae", "rmse", "r2")
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "f1": True,
    "roc_auc": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,
    "r2": True,
}


def classification_metrics(
    y_true: np.ndarray, label: np.ndarray, probabilities: np.ndarray, classes: list[Any]
) -> dict[str, float | None]:
    y_true = np.asarray(y_true)
    binary = len(classes) == 2
    if binary:
        f1 = f1_score(y_true, label, pos_label=classes[1], average="binary", zero_division=0.0)
    else:
        f1 = f1_score(y_true, label, average="macro", zero_division=0.0)
    # ROC AUC gets the raw probabilities: dividing by a row sum would shift rows by
    # ~1e-7 each and split exact ties (a forest votes in steps of 1/n_trees), which
    # moved a 15-tree forest's AUC by 0.001. log_loss, though, warns unless rows sum
    # to one within 1.5e-8, which float32 rows do not.
    # In float64 and clipped: a float32 division can land on 1.0000001, which
    # scikit-learn's log_loss rejects outright.
    as64 = np.asarray(probabilities, dtype=np.float64)
    normalised = np.clip(as64 / as64.sum(axis=1, keepdims=True), 0.0, 1.0)
    present = set(np.unique(y_true).tolist())
    known = present <= set(classes)
    roc_auc: float | None = None
    if known and len(present) >= 2:
        if binary:
            roc_auc = float(roc_auc_score(y_true == classes[1], probabilities[:, 1]))
        elif present == set(classes):
            roc_auc = float(
                roc_auc_score(
                    y_true, probabilities, multi_class="ovr", average="macro", labels=classes
                )
            )
    loss = float(log_loss(y_true, normalised, labels=classes)) if known else None
    return {
        "accuracy": float(accuracy_score(y_true, label)),
        "f1": float(f1),
        "roc_auc": roc_auc,
        "log_loss": loss,
    }


def regression_metrics(y_true: np.ndarray, value: np.ndarray) -> dict[str, float | None]:
    y_true = np.asarray(y_true, dtype=np.float64)
    r2 = float(r2_score(y_true, value)) if y_true.size >= 2 else None
    return {
        "mae": float(mean_absolute_error(y_true, value)),
        "rmse": float(np.sqrt(mean_squared_error(y_true, value))),
        "r2": None if r2 is None or not np.isfinite(r2) else r2,
    }


def score_prediction(
    y_true: np.ndarray, prediction: Prediction, *, task: str, classes: list[Any] | None
) -> dict[str, float | None]:
    if task == "regression":
        assert prediction.value is not None
        return regression_metrics(y_true, prediction.value)
    assert prediction.label is not None and prediction.probabilities is not None
    assert classes is not None
    return classification_metrics(y_true, prediction.label, prediction.probabilities, classes)


def evaluate(
    model: bytes | OnnxPredictor, frame: pd.DataFrame, target: str
) -> dict[str, float | int | None]:
    """Metrics of an ONNX model on ``frame`` (features + ``target``); adds ``n``.

    Rows with a missing target are left out, as training leaves them out; the
    target is converted as for training (booleans to 0/1, integral floats to
    integers) so it compares equal to the model's class labels.
    """
    predictor = model if isinstance(model, OnnxPredictor) else OnnxPredictor(model)
    if target not in frame.columns:
        raise InputError(f"the frame has no target column {target!r}")
    rows = frame[frame[target].notna()]
    if len(rows) == 0:
        raise InputError(f"target {target!r} has no non-missing values to evaluate on")
    y_true, _ = prepare_target(rows[target], target, predictor.meta.task)
    classes = list(predictor.meta.classes) if predictor.meta.classes is not None else None
    if classes is not None and all(isinstance(c, str) for c in classes):
        y_true = np.array([str(v) for v in y_true], dtype=object)
    metrics: dict[str, float | int | None] = dict(
        score_prediction(y_true, predictor.predict(rows), task=predictor.meta.task, classes=classes)
    )
    metrics["n"] = len(rows)
    return metrics
