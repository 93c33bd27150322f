"""Point-in-time joins: each label row gets each feature as it was known at its time.

For a label row of entity ``e`` at time ``t`` the value of a feature is the one
from the row of ``e`` with the greatest event time ``<= t`` (a feature stamped
exactly at ``t`` is visible), provided ``t - event_time <= ttl``; otherwise it is
missing. A row stamped after ``t`` is never used, so training sets cannot leak
the future. Ties on event time go to the row ingested last.

The join is ``pandas.merge_asof`` (backward, exact matches allowed, tolerance =
TTL) grouped by the entity columns, run once per view on a spine of the label
times and entity keys sorted by time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd

from edgeloop_control.featurestore.errors import InvalidInputError
from edgeloop_control.featurestore.schema import SEQ_COLUMN, ColumnType

SPINE_TS = "__ts"
SPINE_POS = "__pos"


def build_spine(times: pd.Series) -> pd.DataFrame:
    """Label positions sorted by time (stable, so equal times keep label order)."""
    # Sort on the raw datetime64 values: a tz-aware Series would go through
    # Python Timestamp objects, a hundred times slower.
    naive = times.dt.tz_convert(None).to_numpy()
    order = np.argsort(naive, kind="stable")
    return pd.DataFrame({SPINE_POS: order, SPINE_TS: pd.Series(naive[order]).dt.tz_localize("UTC")})


def align_entity(values: pd.Series, want: ColumnType, column: str, view: str) -> pd.Series:
    """Cast a label entity column (no nulls) to the view's key type, or explain why not."""
    dtype = values.dtype
    if want == "int64":
        if pd.api.types.is_integer_dtype(dtype):
            return values.astype("int64")
        if pd.api.types.is_float_dtype(dtype):
            as_int = values.astype("int64")
            if (as_int == values).all():
                return as_int
        example = values.iloc[0] if len(values) else None
        raise InvalidInputError(
            f"labels column {column!r} ({dtype}, e.g. {example!r}) cannot key view "
            f"{view!r}, whose entity {column!r} is an integer"
        )
    if pd.api.types.is_string_dtype(dtype) and (
        not pd.api.types.is_object_dtype(dtype)
        or pd.api.types.infer_dtype(values, skipna=True) == "string"
    ):
        return values.astype("str")
    example = values.iloc[0] if len(values) else None
    raise InvalidInputError(
        f"labels column {column!r} ({dtype}, e.g. {example!r}) cannot key view {view!r}, "
        f"whose entity {column!r} is a string"
    )


def asof_join(
    spine: pd.DataFrame,
    features: pd.DataFrame,
    *,
    entity: Sequence[str],
    timestamp: str,
    columns: Sequence[str],
    ttl: dt.timedelta | None,
) -> pd.DataFrame:
    """Feature ``columns`` aligned row for row with ``spine`` (sorted by ``SPINE_TS``).

    ``spine`` holds ``SPINE_TS`` and the entity columns (already cast, no nulls);
    ``features`` holds the entity columns, ``timestamp``, ``SEQ_COLUMN`` and
    ``columns``, in any order.
    """
    # Sorting by (time, ingest seq), stable, and letting merge_asof take the last
    # of equal times is what makes the latest-ingested row win a tie. numpy's
    # lexsort on the raw values is several times faster than DataFrame.sort_values.
    times = features[timestamp].dt.tz_convert(None).to_numpy()
    seq = features[SEQ_COLUMN].to_numpy()
    if len(seq) and (seq == seq[0]).all():
        order = np.argsort(times, kind="stable")
    else:
        order = np.lexsort((seq, times))
    right = features[[*entity, timestamp, *columns]].take(order)
    right = right.rename(columns={timestamp: SPINE_TS})
    for name in entity:
        if right[name].dtype != spine[name].dtype:
            right[name] = right[name].astype(spine[name].dtype)
    merged = pd.merge_asof(
        spine[[SPINE_TS, *entity]],
        right,
        on=SPINE_TS,
        by=list(entity),
        direction="backward",
        allow_exact_matches=True,
        tolerance=None if ttl is None else pd.Timedelta(ttl),
    )
    return merged[list(columns)]
