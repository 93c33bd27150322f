"""Column typing and value conversion, shared by training and inference.

Training and :class:`~edgeloop_control.training.predictor.OnnxPredictor` convert
columns through the same two functions, so the scikit-learn pipeline is fitted on
exactly the values the ONNX graph will receive:

* numeric features become float32 (NaN for missing). Training casts to float32
  *before* fitting so tree thresholds and scaler statistics are learnt on the
  values an agent can send; the float32 ONNX input then loses nothing.
* string features become Python ``str`` objects, missing ones the empty string
  :data:`STRING_MISSING` (an ONNX string tensor has no null), which one-hot
  encoding then treats as one more category.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from edgeloop_control.training.errors import InputError, TrainingError

FeatureKind = Literal["float", "string"]

# What a missing categorical value becomes in the ONNX string input.
STRING_MISSING = ""

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMERIC_INFERRED = {"integer", "floating", "mixed-integer-float", "decimal", "boolean", "empty"}


def infer_feature_kind(series: pd.Series, name: str) -> FeatureKind:
    """Decide whether a training column is numeric or categorical, or reject it."""
    dtype = series.dtype
    if pd.api.types.is_complex_dtype(dtype):
        raise TrainingError(f"feature {name!r} holds complex numbers; it cannot be a feature")
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return "float"
    if isinstance(dtype, pd.CategoricalDtype):
        _check_category_values(dtype.categories, name)
        return "string"
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        raise TrainingError(
            f"feature {name!r} is a {dtype} column; derive numeric features from it "
            "(hour of day, age in days...) or list it in exclude"
        )
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        inferred = pd.api.types.infer_dtype(series, skipna=True)
        if inferred == "string":
            return "string"
        if inferred in _NUMERIC_INFERRED:
            return "float"
        values = series.dropna()
        odd = next((v for v in values if not _is_plain_scalar(v)), None)
        if odd is not None:
            raise TrainingError(
                f"feature {name!r} holds {type(odd).__name__} values (e.g. {odd!r}), which "
                "are neither numbers nor strings; convert it or list it in exclude"
            )
        if _all_numbers(values):
            # Booleans mixed with numbers (a bool column beside captured 0.0/1.0
            # values): every value is a number.
            return "float"
        text = next(v for v in values if isinstance(v, str))
        number = next(v for v in values if not isinstance(v, str))
        raise TrainingError(
            f"feature {name!r} mixes strings and numbers (e.g. {text!r} and {number!r}); "
            "cast it to str to treat it as categorical or to float to treat it as numeric"
        )
    raise TrainingError(f"feature {name!r} has unsupported dtype {dtype}; list it in exclude")


def is_boolean_column(series: pd.Series) -> bool:
    """True for a column of booleans (missing values allowed): the model metadata
    then types the feature ``bool``, and devices take JSON true/false for it."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return True
    return bool(
        pd.api.types.is_object_dtype(series.dtype)
        and series.notna().any()
        and pd.api.types.infer_dtype(series, skipna=True) == "boolean"
    )


def numeric_values(series: pd.Series, name: str) -> np.ndarray:
    """A numeric feature as float32, missing values as NaN."""
    dtype = series.dtype
    if pd.api.types.is_complex_dtype(dtype):
        raise InputError(f"column {name!r} holds complex numbers, expected real numbers")
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_object_dtype(dtype) and (
        pd.api.types.infer_dtype(series, skipna=True) in _NUMERIC_INFERRED or _all_numbers(series)
    ):
        missing = series.isna().to_numpy()
        values = np.array(
            [np.nan if m else float(v) for v, m in zip(series.to_numpy(), missing, strict=True)],
            dtype=np.float64,
        )
    else:
        example = _first_offending(series)
        raise InputError(f"column {name!r} must be numeric, got dtype {dtype} (e.g. {example!r})")
    too_big = np.isfinite(values) & (np.abs(values) > _FLOAT32_MAX)
    if too_big.any():
        raise InputError(
            f"column {name!r} has values beyond the float32 range "
            f"(e.g. {values[too_big][0]!r}); rescale it"
        )
    return values.astype(np.float32)


def string_values(series: pd.Series, name: str) -> np.ndarray:
    """A categorical feature as an object array of ``str``; missing becomes ``""``."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        raise InputError(f"column {name!r} is a {series.dtype} column, expected strings")
    missing = series.isna().to_numpy()
    raw = series.to_numpy(dtype=object)
    out = np.empty(len(raw), dtype=object)
    for i, (value, is_missing) in enumerate(zip(raw, missing, strict=True)):
        if is_missing:
            out[i] = STRING_MISSING
        elif isinstance(value, str):
            out[i] = value
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            # Integer codes in a categorical column: "3" and 3 are the same category.
            out[i] = str(int(value))
        else:
            raise InputError(
                f"column {name!r} must hold strings, got {value!r} of type {type(value).__name__}"
            )
    return out


def _check_category_values(categories: pd.Index, name: str) -> None:
    bad = [
        c
        for c in categories
        if not isinstance(c, (str, int, np.integer)) or isinstance(c, (bool, np.bool_))
    ]
    if bad:
        raise TrainingError(
            f"feature {name!r} is categorical with non-string categories (e.g. {bad[0]!r}); "
            "use string or integer categories"
        )


def _is_plain_scalar(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (str, int, float, np.integer, np.floating))


def _all_numbers(series: pd.Series) -> bool:
    """True when every non-missing value is a bool, int or float (mixed freely)."""
    return all(_is_plain_scalar(v) and not isinstance(v, str) for v in series.dropna())


def _first_offending(series: pd.Series) -> Any:
    values = series.dropna()
    for value in values:
        if not _is_plain_scalar(value) or isinstance(value, str):
            return value
    return values.iloc[0] if len(values) else None


def feature_frame(
    frame: pd.DataFrame,
    numeric: list[str] | tuple[str, ...],
    categorical: list[str] | tuple[str, ...],
) -> pd.DataFrame:
    """The scikit-learn pipeline's input: numeric columns (float32 values held as
    float64, so the pipeline computes in float64 on exactly what ONNX receives)
    then categorical columns as ``str``, with a fresh RangeIndex."""
    columns: dict[str, np.ndarray] = {}
    for name in numeric:
        columns[name] = numeric_values(frame[name], name).astype(np.float64)
    for name in categorical:
        columns[name] = string_values(frame[name], name)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)))


def coerce_to_kinds(
    frame: pd.DataFrame, kinds: dict[str, FeatureKind], boolean: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """``frame`` with each listed column converted to its feature kind.

    Rows from different sources (a feature view, samples captured on devices as
    JSON) carry the same feature as bool, int, float or str; concatenated as
    they are, pandas falls back to object columns whose kind is ambiguous. So
    every source is brought to the model's schema first: a "float" feature
    becomes float64 (True/False as 1.0/0.0, missing as NaN), a "string" feature
    ``str`` values with integer codes written as integers (missing stays NaN).
    A "float" feature listed in ``boolean`` (the model types it ``bool``) becomes
    pandas' nullable boolean, so a retrained model types it ``bool`` again; a
    value other than true/false/0/1 there raises :class:`InputError`.
    A value that fits neither raises :class:`InputError` naming the column.
    """
    out = frame.copy()
    for name, kind in kinds.items():
        if name not in out.columns:
            continue
        series = out[name]
        if kind == "float" and name in boolean:
            out[name] = _boolean_values(series, name)
        elif kind == "float":
            out[name] = numeric_values(series, name).astype(np.float64)
        else:
            missing = series.isna().to_numpy()
            values = np.array(string_values(series, name), dtype=object)  # a copy
            values[missing] = None
            out[name] = pd.Series(values, index=series.index, dtype=object)
    return out


def _boolean_values(series: pd.Series, name: str) -> pd.Series:
    numbers = numeric_values(series, name).astype(np.float64)
    present = ~np.isnan(numbers)
    odd = present & (numbers != 0.0) & (numbers != 1.0)
    if odd.any():
        raise InputError(
            f"column {name!r} is a boolean feature, got {numbers[odd][0]:g}; "
            "expected true, false, 0 or 1"
        )
    values = pd.array(numbers == 1.0, dtype="boolean")
    values[~present] = pd.NA
    return pd.Series(values, index=series.index)
