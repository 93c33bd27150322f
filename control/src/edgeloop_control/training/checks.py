"""Checks on a training frame before anything is fitted: columns, features, the timestamp,
values scikit-learn would choke on. Each raises :class:`TrainingError` with a message that
names the column and says what to do, so a bad input fails at the boundary, not mid-fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from edgeloop_control.training.columns import STRING_MISSING
from edgeloop_control.training.config import TrainConfig
from edgeloop_control.training.errors import TrainingError


def check_frame(df: Any) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TrainingError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise TrainingError("the training frame has no rows")
    bad = [c for c in df.columns if not isinstance(c, str) or not c]
    if bad:
        raise TrainingError(f"column names must be non-empty strings, got {bad!r}")
    if not df.columns.is_unique:
        dupes = sorted(set(df.columns[df.columns.duplicated()]))
        raise TrainingError(f"the frame repeats column(s) {', '.join(dupes)}")


def resolve_features(df: pd.DataFrame, config: TrainConfig) -> list[str]:
    available = list(df.columns)

    def unknown(names: list[str], what: str) -> None:
        absent = [n for n in names if n not in df.columns]
        if absent:
            raise TrainingError(f"unknown {what} column(s) {absent}; the frame has {available}")

    unknown([config.target], "target")
    if config.timestamp:
        unknown([config.timestamp], "timestamp")
    unknown(list(config.exclude), "exclude")
    reserved = {config.target, config.timestamp}
    if config.features is not None:
        unknown(list(config.features), "feature")
        clash = [f for f in config.features if f in reserved]
        if clash:
            raise TrainingError(f"feature(s) {clash} are also the target or the timestamp column")
        features = [f for f in config.features if f not in config.exclude]
    else:
        features = [c for c in available if c not in reserved and c not in config.exclude]
    if not features:
        raise TrainingError("no feature columns left after removing target/timestamp/exclude")
    return features


def timestamp_values(series: pd.Series, name: str) -> np.ndarray:
    """Sortable timestamps: int64 nanoseconds (UTC) for dates, float64 for numbers."""
    if pd.api.types.is_bool_dtype(series.dtype):
        raise TrainingError(f"timestamp {name!r} is boolean")
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(values).all():
            raise TrainingError(
                f"timestamp {name!r} has {int((~np.isfinite(values)).sum())} missing or "
                "non-finite values"
            )
        return values
    try:
        parsed = pd.to_datetime(series, utc=True)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"timestamp {name!r} cannot be read as dates: {exc}") from None
    if parsed.isna().any():
        raise TrainingError(f"timestamp {name!r} has {int(parsed.isna().sum())} missing values")
    return parsed.dt.tz_localize(None).astype("datetime64[ns]").to_numpy().view(np.int64)


def check_training_features(
    x_train: pd.DataFrame, numeric: list[str], categorical: list[str], max_categories: int
) -> None:
    for name in numeric:
        if np.isnan(x_train[name].to_numpy()).all():
            raise TrainingError(
                f"feature {name!r} has no values in the {len(x_train)} training rows "
                "(all missing); drop it or list it in exclude"
            )
    check_finite(x_train, numeric, "training")
    for name in categorical:
        values = x_train[name]
        if (values == STRING_MISSING).all():
            raise TrainingError(
                f"feature {name!r} has no values in the {len(x_train)} training rows "
                "(all missing); drop it or list it in exclude"
            )
        n_distinct = values.nunique()
        if n_distinct > max_categories:
            raise TrainingError(
                f"categorical feature {name!r} has {n_distinct} distinct values in the "
                f"training rows (max_categories={max_categories}); it looks like an "
                "identifier or free text: exclude it or raise max_categories"
            )


def check_finite(frame: pd.DataFrame, numeric: list[str], where: str) -> None:
    for name in numeric:
        infinite = np.isinf(frame[name].to_numpy())
        if infinite.any():
            raise TrainingError(
                f"feature {name!r} has {int(infinite.sum())} infinite values in the {where} "
                "rows; replace them with NaN (missing) or finite values"
            )
