"""A stable fingerprint of a data frame.

The hash covers the column names, each column's canonical value type and the
*multiset* of rows: row order does not matter (rows are hashed one by one and the
row hashes are sorted), column order does. Values are canonicalised first so the
hash follows what the values mean rather than how pandas stored them: every
number is a float64 (``1`` and ``1.0`` hash alike, ``-0.0`` as ``0.0``, every NaN
alike), timestamps are UTC nanoseconds and everything else is compared as text,
with None/NaN/NA alike.

Row hashes come from ``pandas.util.hash_pandas_object`` (SipHash with pandas'
fixed key), whose output has been stable across pandas releases since 0.20; a
change there would change every hash at once, never one row silently.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One uint64 per row, independent of the frame's index and of other rows."""
    return _canonical(frame)[1]


def frame_hash(frame: pd.DataFrame) -> str:
    """``sha256:<hex>`` of the column schema and the sorted row hashes."""
    schema, hashes = _canonical(frame)
    digest = hashlib.sha256()
    digest.update(json.dumps(schema, separators=(",", ":")).encode("utf-8"))
    digest.update(np.sort(hashes).astype("<u8").tobytes())
    return f"sha256:{digest.hexdigest()}"


def _canonical(frame: pd.DataFrame) -> tuple[list[list[str]], np.ndarray]:
    if not frame.columns.is_unique:
        dupes = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise ValueError(f"cannot hash a frame with repeated columns: {', '.join(dupes)}")
    schema: list[list[str]] = []
    columns: dict[int, pd.Series] = {}
    for i, name in enumerate(frame.columns):
        kind, values = _canonical_column(frame[name])
        schema.append([str(name), kind])
        columns[i] = values
    if not columns:
        return schema, np.zeros(len(frame), dtype=np.uint64)
    hashes = pd.util.hash_pandas_object(pd.DataFrame(columns), index=False)
    return schema, hashes.to_numpy(dtype=np.uint64)


def _canonical_column(series: pd.Series) -> tuple[str, pd.Series]:
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        if getattr(dtype, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        ns = series.astype("datetime64[ns]").to_numpy().view(np.int64)
        return "datetime", pd.Series(ns)
    if (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype)) and not (
        pd.api.types.is_complex_dtype(dtype)
    ):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan) + 0.0
        values[np.isnan(values)] = np.nan
        return "number", pd.Series(values)
    missing = series.isna().to_numpy()
    raw = series.to_numpy(dtype=object)
    text = np.array(
        [None if m else str(v) for v, m in zip(raw, missing, strict=True)], dtype=object
    )
    return "text", pd.Series(text, dtype=object)
