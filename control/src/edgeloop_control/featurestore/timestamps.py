"""Instants and durations as the store understands them.

Every timestamp is stored as UTC ``timestamp[us]``. Input may be ISO 8601 strings
(naive ones are taken as UTC), pandas/numpy/python datetimes, or unix seconds
(int or float). A value that cannot be read is an error naming the column and the
first bad value; nothing is silently dropped.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import re
from typing import Any

import numpy as np
import pandas as pd

from edgeloop_control.featurestore.errors import InvalidInputError, TimestampError

TIMESTAMP_DTYPE = "datetime64[us, UTC]"
US_PER_DAY = 86_400_000_000

# Unix seconds beyond this (year 2286) are almost always milliseconds or
# nanoseconds passed by mistake; refusing them beats storing dates in year 57000.
_MAX_UNIX_SECONDS = 1e10

_EPOCH = pd.Timestamp(0, tz="UTC")
_TTL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")
_TTL_UNITS = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}


def to_utc(values: pd.Series, column: str) -> pd.Series:
    """Return ``values`` as a ``datetime64[us, UTC]`` series (same index)."""
    missing = values.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise TimestampError(
            f"timestamp column {column!r} has {int(missing.sum())} missing value(s) "
            f"(first at row {first})"
        )
    dtype = values.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        out = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(dtype):
        out = values.dt.tz_localize("UTC")
    elif pd.api.types.is_bool_dtype(dtype):
        raise TimestampError(
            f"timestamp column {column!r} holds booleans (e.g. {values.iloc[0]!r}); "
            "expected ISO 8601 strings, datetimes or unix seconds"
        )
    elif pd.api.types.is_numeric_dtype(dtype):
        out = _from_unix_seconds(values, column)
    else:
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind in ("integer", "floating", "mixed-integer-float", "decimal"):
            out = _from_unix_seconds(values.astype("float64"), column)
        else:
            out = _from_objects(values, column)
    return out.astype(TIMESTAMP_DTYPE)


def _from_unix_seconds(values: pd.Series, column: str) -> pd.Series:
    seconds = values.to_numpy(dtype="float64")
    bad = ~np.isfinite(seconds) | (np.abs(seconds) >= _MAX_UNIX_SECONDS)
    if bad.any():
        example = values.iloc[int(np.flatnonzero(bad)[0])]
        hint = ""
        if np.isfinite(seconds[bad]).all():
            hint = " (unix seconds expected; is it in milliseconds?)"
        raise TimestampError(
            f"timestamp column {column!r} has {int(bad.sum())} out-of-range value(s), "
            f"e.g. {example!r}{hint}"
        )
    # Round rather than truncate: 1764160000.123 is 1764160000.12299990654 in binary.
    micros = np.round(seconds * 1e6).astype("int64")
    return pd.Series(micros.astype("datetime64[us]"), index=values.index).dt.tz_localize("UTC")


def _from_objects(values: pd.Series, column: str) -> pd.Series:
    out = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    bad = out.isna().to_numpy()
    if bad.any():
        example = values.iloc[int(np.flatnonzero(bad)[0])]
        raise TimestampError(
            f"timestamp column {column!r} has {int(bad.sum())} unreadable value(s), "
            f"e.g. {example!r}; expected ISO 8601 strings, datetimes or unix seconds"
        )
    return out


def parse_instant(value: Any, name: str) -> pd.Timestamp | None:
    """Read one instant (a range bound, a cut-off); ``None`` passes through."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TimestampError(f"{name} must be a timestamp, got {value!r}")
    series = pd.Series([value], dtype="float64" if isinstance(value, (int, float)) else object)
    try:
        return to_utc(series, name).iloc[0]
    except TimestampError:
        raise TimestampError(
            f"{name} {value!r} is not a timestamp; expected ISO 8601, a datetime or unix seconds"
        ) from None


def to_micros(value: pd.Timestamp) -> int:
    """Microseconds since the epoch of a UTC timestamp."""
    # Timestamp.value is in nanoseconds whatever the unit; subtracting keeps
    # dates beyond the nanosecond range (year 2262) exact.
    return int((value - _EPOCH) // pd.Timedelta(microseconds=1))


def from_micros(value: int) -> pd.Timestamp:
    return pd.Timestamp(value, unit="us", tz="UTC")


def parse_ttl(value: Any) -> dt.timedelta | None:
    """Read a time-to-live: a timedelta, seconds, or a string like ``"7d"``, ``"1d12h"``."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        ttl = pd.Timedelta(value).to_pytimedelta()
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        if not math.isfinite(value):
            raise InvalidInputError(f"ttl must be finite, got {value!r}")
        ttl = dt.timedelta(seconds=float(value))
    elif isinstance(value, str):
        ttl = _ttl_from_text(value)
    else:
        raise InvalidInputError(
            f"ttl must be a timedelta, seconds or a string like '7d', got {value!r}"
        )
    if ttl <= dt.timedelta(0):
        raise InvalidInputError(f"ttl must be positive, got {value!r}")
    return ttl


def _ttl_from_text(text: str) -> dt.timedelta:
    compact = text.strip().lower()
    try:
        return dt.timedelta(seconds=float(compact))
    except ValueError:
        pass
    parts = _TTL_PART.findall(compact)
    if not parts or _TTL_PART.sub("", compact).strip():
        raise InvalidInputError(
            f"ttl {text!r} is not a duration; use seconds or units w/d/h/m/s, e.g. '7d', '1d12h'"
        )
    return dt.timedelta(seconds=sum(float(n) * _TTL_UNITS[u] for n, u in parts))


def format_ttl(ttl: dt.timedelta | None) -> str:
    """Compact text for a TTL (``7d``, ``1d12h``, ``90s``); ``-`` for none."""
    if ttl is None:
        return "-"
    micros = ttl // dt.timedelta(microseconds=1)
    out = []
    for unit in ("d", "h", "m"):
        size = int(_TTL_UNITS[unit]) * 1_000_000
        if micros >= size:
            out.append(f"{micros // size}{unit}")
            micros %= size
    if micros or not out:
        out.append(f"{micros / 1e6:g}s")
    return "".join(out)
