"""The target column: task detection and conversion to scikit-learn labels."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from edgeloop_control.training.errors import TrainingError

Task = Literal["classification", "regression"]

# An integer-valued numeric target with at most this many distinct values is taken
# as class labels when the task is "auto"; more than that is a count or an amount.
MAX_AUTO_CLASSES = 20


def prepare_target(series: pd.Series, name: str, task: str) -> tuple[np.ndarray, Task]:
    """Convert a target without missing values; returns (y, resolved task).

    Class labels come back as int64 (booleans become 0/1, integral floats become
    integers) or as Python ``str``; regression targets as float64. Those are the
    label types an ONNX classifier can output and :class:`ModelMeta` can list.
    """
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        if task == "regression":
            raise TrainingError(f"target {name!r} is boolean; use task='classification'")
        return series.to_numpy(dtype=np.int64), "classification"
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return _numeric_target(series.to_numpy(dtype=np.float64), name, task)
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        values = series.to_numpy(dtype=object)
        if all(isinstance(v, str) for v in values):
            if task == "regression":
                raise TrainingError(
                    f"target {name!r} holds strings (e.g. {values[0]!r}); regression needs "
                    "numbers, use task='classification'"
                )
            return values, "classification"
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred in ("integer", "floating", "mixed-integer-float"):
            return _numeric_target(series.to_numpy(dtype=np.float64), name, task)
        example = next(v for v in values if not isinstance(v, str))
        raise TrainingError(
            f"target {name!r} mixes strings with {type(example).__name__} values "
            f"(e.g. {example!r}); cast it to one type"
        )
    raise TrainingError(f"target {name!r} has unsupported dtype {dtype}")


def _numeric_target(values: np.ndarray, name: str, task: str) -> tuple[np.ndarray, Task]:
    if not np.all(np.isfinite(values)):
        bad = values[~np.isfinite(values)][0]
        raise TrainingError(f"target {name!r} contains non-finite values (e.g. {bad!r})")
    integral = bool(np.all(values == np.round(values)))
    if task == "auto":
        n_distinct = np.unique(values).size
        task = "classification" if integral and n_distinct <= MAX_AUTO_CLASSES else "regression"
    if task == "regression":
        return values, "regression"
    if not integral:
        bad = values[values != np.round(values)][0]
        raise TrainingError(
            f"target {name!r} has non-integer values (e.g. {bad!r}); classification needs "
            "class labels, use task='regression'"
        )
    if np.abs(values).max() >= 2.0**53:
        raise TrainingError(f"target {name!r} has class labels too large to represent exactly")
    return values.astype(np.int64), "classification"
