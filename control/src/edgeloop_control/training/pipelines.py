"""scikit-learn pipelines for each algorithm, built so skl2onnx can export them.

The pipeline input is a frame whose columns are the numeric features followed by
the categorical ones. The ColumnTransformer selects them *by position*: skl2onnx
maps positions across the graph inputs in order, so position ``i < n_numeric``
lands in the float32 input and the rest in the string input.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgeloop_control.training.errors import TrainingError


def make_estimator(algo: str, task: str, *, seed: int, params: dict[str, Any]) -> BaseEstimator:
    """The final estimator with edgeloop's defaults, then the user's ``params``."""
    classification = task == "classification"
    estimator: BaseEstimator
    if algo == "logreg":
        # Ridge rather than LinearRegression: one-hot columns are collinear with the
        # intercept, and a little shrinkage keeps the coefficients finite and stable.
        estimator = (
            LogisticRegression(max_iter=1000, random_state=seed)
            if classification
            else Ridge(alpha=1.0, random_state=seed)
        )
    elif algo == "rf":
        estimator = (
            RandomForestClassifier(random_state=seed)
            if classification
            else RandomForestRegressor(random_state=seed)
        )
    elif algo == "hgb":
        estimator = (
            HistGradientBoostingClassifier(random_state=seed)
            if classification
            else HistGradientBoostingRegressor(random_state=seed)
        )
    else:
        raise TrainingError(f"unknown algo {algo!r}")
    valid = estimator.get_params(deep=False)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TrainingError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for "
            f"{type(estimator).__name__}; valid: {', '.join(sorted(valid))}"
        )
    try:
        estimator.set_params(**params)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"invalid params for {type(estimator).__name__}: {exc}") from None
    return estimator


def build_pipeline(
    algo: str,
    task: str,
    n_numeric: int,
    n_categorical: int,
    *,
    seed: int,
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """Preprocessing + estimator for ``n_numeric`` then ``n_categorical`` columns."""
    if n_numeric + n_categorical == 0:
        raise TrainingError("a pipeline needs at least one feature")
    numeric: Pipeline | str
    if algo == "logreg":
        numeric = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
    elif algo == "rf":
        numeric = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True))])
    else:
        # HistGradientBoosting learns where missing values go at every split, which
        # beats median imputation, and skl2onnx exports that (missing_go_to_left).
        numeric = "passthrough"
    transformers: list[tuple[str, Any, list[int]]] = []
    if n_numeric:
        transformers.append(("numeric", numeric, list(range(n_numeric))))
    if n_categorical:
        transformers.append(
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(range(n_numeric, n_numeric + n_categorical)),
            )
        )
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, sparse_threshold=0.0)),
            ("model", make_estimator(algo, task, seed=seed, params=params or {})),
        ]
    )


def snap_thresholds_to_float32(pipeline: Pipeline) -> None:
    """Make a fitted HistGradientBoosting model's split thresholds float32 values.

    scikit-learn tests ``x <= t`` with a float64 ``t`` (a midpoint between two bin
    edges); skl2onnx rounds ``t`` to the *nearest* float32. When that rounds up onto a
    value the data can take -- a cent grid: training saw 1.24 and 1.26, the split
    sits at 1.25 and a device sends 1.25 -- the two disagree (measured: 17% relative
    error on such data). Replacing ``t`` by the largest float32 <= ``t`` changes
    nothing for float32 inputs (``x <= t`` iff ``x <= floor32(t)`` for any float32
    ``x``), which is all the model ever receives, and the export is then exact.
    Random forests need none of this: skl2onnx already adjusts their thresholds.
    """
    model = pipeline[-1]
    if not isinstance(model, (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
        return
    for predictors in model._predictors:
        for predictor in predictors:
            nodes = predictor.nodes
            split = (nodes["is_leaf"] == 0) & (nodes["is_categorical"] == 0)
            threshold = nodes["num_threshold"][split]
            snapped = threshold.astype(np.float32)
            above = snapped.astype(np.float64) > threshold
            snapped[above] = np.nextafter(snapped[above], np.float32(-np.inf))
            nodes["num_threshold"][split] = snapped.astype(np.float64)


def estimator_params(pipeline: Pipeline) -> dict[str, Any]:
    """The final estimator's hyper-parameters, JSON-safe and sorted by name.

    Values JSON cannot hold are recorded by type name only, never with ``repr``:
    an object address would make the embedded metadata, and so the ONNX bytes,
    differ between identical runs.
    """
    params = pipeline[-1].get_params(deep=False)
    return {k: _json_safe(params[k]) for k in sorted(params)}


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        if hasattr(value, "item"):
            return _json_safe(value.item())
        return f"<{type(value).__name__}>"
    return value
