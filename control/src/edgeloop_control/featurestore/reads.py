"""Reading feature views: rows in a time range and point-in-time training sets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from edgeloop_control.featurestore.catalog import ViewVersion
from edgeloop_control.featurestore.errors import InvalidInputError, MissingColumnError
from edgeloop_control.featurestore.offline import read_files
from edgeloop_control.featurestore.pointintime import (
    SPINE_POS,
    SPINE_TS,
    align_entity,
    asof_join,
    build_spine,
)
from edgeloop_control.featurestore.refs import ViewRef, parse_feature_ref
from edgeloop_control.featurestore.schema import ROW_ID_COLUMN, SEQ_COLUMN
from edgeloop_control.featurestore.timestamps import parse_instant, to_micros, to_utc
from edgeloop_control.featurestore.views import ViewCatalogue

_READ_ATTEMPTS = 3


class ViewReader(ViewCatalogue):
    """Reads rows of view versions and joins them point-in-time onto labels."""

    def read(
        self,
        ref: str | ViewRef,
        *,
        start: Any = None,
        end: Any = None,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Rows of one view version with event time in ``[start, end)``.

        ``columns`` selects feature columns; the entity and timestamp columns are
        always included. Rows are sorted by event time, ties in ingest order.
        Integer columns with missing
        values come back as float64 (NaN), strings as pandas' string dtype and the
        timestamp as ``datetime64[us, UTC]``.
        """
        found = self.view(ref)
        names = _read_columns(found, columns)
        frame = self._scan(found, names, parse_instant(start, "start"), parse_instant(end, "end"))
        if not frame[found.timestamp].is_monotonic_increasing:
            # Files are scanned in ingest order, so a stable sort breaks ties by ingest.
            frame = frame.sort_values(found.timestamp, kind="stable", ignore_index=True)
        return frame

    def _scan(
        self,
        view: ViewVersion,
        names: Sequence[str],
        start: pd.Timestamp | None,
        end: pd.Timestamp | None,
        days: Sequence[int] | None = None,
    ) -> pd.DataFrame:
        if start is not None and end is not None and end <= start:
            raise InvalidInputError(f"end ({end}) must be after start ({start})")
        field = pc.field(view.timestamp)
        ts_type = pa.timestamp("us", tz="UTC")
        expr = None
        if start is not None:
            expr = field >= pa.scalar(start, type=ts_type)
        if end is not None:
            upper = field < pa.scalar(end, type=ts_type)
            expr = upper if expr is None else expr & upper
        schema = view.schema.arrow_schema(row_id=view.has_row_id)
        for attempt in range(_READ_ATTEMPTS):
            entries = self._catalog.files(
                view.name,
                view.version,
                start_us=None if start is None else to_micros(start),
                end_us=None if end is None else to_micros(end),
                days=days,
            )
            try:
                return read_files(self.root, entries, schema, names, expr).to_pandas()
            except FileNotFoundError:
                # A compaction replaced these files between listing and reading;
                # the catalogue now lists their replacement.
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def training_set(
        self,
        labels: pd.DataFrame,
        *,
        timestamp: str,
        features: Sequence[str] | None = None,
        views: Sequence[str] | None = None,
        full_names: bool = False,
    ) -> pd.DataFrame:
        """Point-in-time correct features for each labelled row.

        ``labels`` holds the entity columns of every view used and the time
        column ``timestamp``. ``features`` lists ``"view:col"`` or
        ``"view@v2:col"``; ``views`` adds every feature of ``"view"`` or
        ``"view@vN"``. Each feature is its value in the latest row of that entity
        at or before the label time, within the view's TTL; otherwise missing.
        Feature columns are named after the column; with ``full_names``,
        ``"view__col"`` (``"view_vN__col"`` when two versions of a view are
        used). They are appended to a copy of ``labels``, in its row order.
        """
        if not isinstance(labels, pd.DataFrame):
            raise InvalidInputError(f"labels must be a DataFrame, got {type(labels).__name__}")
        if timestamp not in labels.columns:
            raise MissingColumnError(
                f"labels have no timestamp column {timestamp!r} (columns: {list(labels.columns)})"
            )
        requests = self._feature_requests(features, views)
        names = _output_names(requests, labels, full_names)
        times = to_utc(labels[timestamp], timestamp)
        spine = build_spine(times)
        positions = spine[SPINE_POS].to_numpy()
        inverse = np.empty(len(positions), dtype=np.int64)
        inverse[positions] = np.arange(len(positions))

        joined: dict[str, np.ndarray | pd.api.extensions.ExtensionArray] = {}
        for found, columns in requests:
            sorted_values = self._join_view(found, columns, labels, spine)
            for column in columns:
                values = sorted_values[column]
                if isinstance(values.dtype, np.dtype):
                    joined[names[found.ref, column]] = values.to_numpy()[inverse]
                else:
                    joined[names[found.ref, column]] = values.array.take(inverse)
        features_frame = pd.DataFrame(joined, index=labels.index)
        return pd.concat([labels, features_frame], axis=1)

    def _join_view(
        self,
        found: ViewVersion,
        columns: list[str],
        labels: pd.DataFrame,
        spine: pd.DataFrame,
    ) -> pd.DataFrame:
        """Feature columns of one view aligned with the (time-sorted) spine."""
        if not found.entity:
            raise InvalidInputError(
                f"view {found.ref} has no entity columns (its rows only carry a synthetic "
                "row id), so it cannot be joined point-in-time; ingest it with entity=[...]"
            )
        missing = [name for name in found.entity if name not in labels.columns]
        if missing:
            raise MissingColumnError(
                f"labels lack entity column(s) {missing} of view {found.ref} "
                f"(labels columns: {list(labels.columns)})"
            )
        keys = labels[list(found.entity)].iloc[spine[SPINE_POS].to_numpy()]
        present = keys.notna().all(axis=1).to_numpy()
        times = spine[SPINE_TS] if present.all() else spine[SPINE_TS][present]
        sub = pd.DataFrame({SPINE_TS: times.reset_index(drop=True)})
        for name in found.entity:
            values = keys[name][present].reset_index(drop=True)
            sub[name] = align_entity(values, found.types[name], name, found.ref)
        if sub.empty:
            result = pd.DataFrame({c: pd.Series(np.nan, index=range(len(spine))) for c in columns})
            return result
        first, last = sub[SPINE_TS].iloc[0], sub[SPINE_TS].iloc[-1]
        start = first - pd.Timedelta(found.ttl) if found.ttl is not None else None
        end = last + pd.Timedelta(microseconds=1)
        names = [*found.entity, found.timestamp, SEQ_COLUMN, *columns]
        frame = self._scan(found, names, start, end)
        merged = asof_join(
            sub,
            frame,
            entity=found.entity,
            timestamp=found.timestamp,
            columns=columns,
            ttl=found.ttl,
        )
        if present.all():
            return merged
        merged.index = np.flatnonzero(present)
        return merged.reindex(range(len(spine)))

    def _feature_requests(
        self, features: Sequence[str] | None, views: Sequence[str] | None
    ) -> list[tuple[ViewVersion, list[str]]]:
        if isinstance(features, str) or isinstance(views, str):
            raise InvalidInputError("features and views must be lists of references")
        groups: dict[str, tuple[ViewVersion, list[str]]] = {}
        for text in features or []:
            ref = parse_feature_ref(text)
            found = self.view(ref.view)
            if ref.column not in found.features:
                role = "an entity or timestamp column" if ref.column in found.types else "absent"
                raise MissingColumnError(
                    f"feature {ref.column!r} of {found.ref} is {role} (features: {found.features})"
                )
            columns = groups.setdefault(found.ref, (found, []))[1]
            if ref.column not in columns:
                columns.append(ref.column)
        for text in views or []:
            found = self.view(text)
            columns = groups.setdefault(found.ref, (found, []))[1]
            columns += [name for name in found.features if name not in columns]
        if not groups:
            raise InvalidInputError("no features requested: pass features=[...] or views=[...]")
        return list(groups.values())


def _read_columns(found: ViewVersion, columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return found.schema.names
    if isinstance(columns, str):
        raise InvalidInputError(f"columns must be a list of names, got {columns!r}")
    allowed = set(found.schema.names) | ({ROW_ID_COLUMN} if found.has_row_id else set())
    unknown = [name for name in columns if name not in allowed]
    if unknown:
        raise MissingColumnError(
            f"view {found.ref} has no column(s) {unknown} (columns: {found.schema.names})"
        )
    names = [*found.entity, found.timestamp]
    return names + [name for name in columns if name not in names]


def _output_names(
    requests: list[tuple[ViewVersion, list[str]]], labels: pd.DataFrame, full_names: bool
) -> dict[tuple[str, str], str]:
    names: dict[tuple[str, str], str] = {}
    sources: dict[str, list[str]] = {}
    versions_used: dict[str, int] = {}
    for found, _ in requests:
        versions_used[found.name] = versions_used.get(found.name, 0) + 1
    for found, columns in requests:
        # The version goes into the name only when two versions of a view are used.
        prefix = found.name if versions_used[found.name] == 1 else f"{found.name}_v{found.version}"
        for column in columns:
            name = f"{prefix}__{column}" if full_names else column
            names[found.ref, column] = name
            sources.setdefault(name, []).append(f"{found.ref}:{column}")
    clashes = {name: refs for name, refs in sources.items() if len(refs) > 1}
    if clashes:
        name, refs = next(iter(clashes.items()))
        raise InvalidInputError(
            f"features {refs} would all be named {name!r}; pass full_names=True or "
            "request only one of them"
        )
    taken = [name for name in sources if name in labels.columns]
    if taken:
        raise InvalidInputError(
            f"labels already have column(s) {taken}; drop or rename them, or pass full_names=True"
        )
    return names
