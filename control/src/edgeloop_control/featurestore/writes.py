"""Writing rows into feature views: ingest, de-duplication and schema versions.

An ingest appends a batch to the view version whose schema it matches
(creating the next version on ``evolve``), skips rows already stored (by their
key, per event date) and commits Parquet files and their catalogue entries
under the view's writer lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from edgeloop_control.featurestore.catalog import IngestRecord, ViewVersion, utc_now_iso
from edgeloop_control.featurestore.dedup import ALL_DAYS, contains, first_occurrences
from edgeloop_control.featurestore.errors import (
    InvalidInputError,
    MissingColumnError,
    SchemaMismatchError,
)
from edgeloop_control.featurestore.hashing import row_keys
from edgeloop_control.featurestore.offline import (
    remove_files,
    sweep_orphans,
    view_lock,
    write_partitions,
)
from edgeloop_control.featurestore.refs import check_view_name
from edgeloop_control.featurestore.schema import (
    KEY_COLUMN,
    ROW_ID_COLUMN,
    SEQ_COLUMN,
    Column,
    ColumnType,
    ViewSchema,
    check_column_names,
    diff,
    fits,
    infer_types,
    to_arrow_columns,
)
from edgeloop_control.featurestore.timestamps import US_PER_DAY, format_ttl, parse_ttl, to_utc
from edgeloop_control.featurestore.views import ViewCatalogue

# Event-time column stamped at ingest for views ingested without a timestamp.
INGESTED_AT = "ingested_at"

DataSource: TypeAlias = "pd.DataFrame | str | os.PathLike[str]"


@dataclass(frozen=True)
class IngestResult:
    view: str
    version: int
    rows: int  # rows in the input
    accepted: int  # rows stored
    duplicates: int  # rows skipped: already stored, or repeated within the input
    files: int
    created_version: bool
    fingerprint: str

    @property
    def ref(self) -> str:
        return f"{self.view}@v{self.version}"


class ViewWriter(ViewCatalogue):
    """Appends rows to feature views."""

    def ingest(
        self,
        data: DataSource,
        view: str,
        *,
        entity: Sequence[str] | str | None = None,
        timestamp: str | None = None,
        ttl: str | dt.timedelta | float | None = None,
        evolve: bool = False,
        key: Sequence[str] | str | None = None,
    ) -> IngestResult:
        """Append rows (a DataFrame, or a CSV/Parquet path) to a view.

        ``entity`` and ``timestamp`` name the entity-key and event-time columns;
        they default to the latest version's. Without any timestamp column the
        rows are stamped with the ingest time (column ``ingested_at``); without
        an entity each row gets a synthetic ``__row_id``, and such a view cannot
        be joined point-in-time. ``key`` names the columns identifying a row for
        de-duplication (default: every column). Data whose schema differs from
        the latest version raises :class:`SchemaMismatchError` unless ``evolve``
        is true, which creates the next version.
        """
        check_view_name(view)
        frame, source = load_frame(data)
        with view_lock(self.root, view):
            return self._ingest_locked(
                frame,
                view,
                source,
                entity=_column_list(entity, "entity"),
                timestamp=_optional_name(timestamp, "timestamp"),
                ttl=parse_ttl(ttl),
                key=_column_list(key, "key"),
                evolve=evolve,
                route=False,
            )

    def _ingest_routed(
        self,
        frame: pd.DataFrame,
        view: str,
        source: str,
        *,
        entity: list[str],
        timestamp: str,
        key: list[str],
    ) -> IngestResult:
        """Ingest into whichever version matches ``frame``'s schema, creating one if none does.

        Used for captured samples, where two model versions in an A/B test send
        different features at the same time: the strict latest-version rule would
        make the view's version flip on every batch.
        """
        with view_lock(self.root, view):
            return self._ingest_locked(
                frame,
                view,
                source,
                entity=entity,
                timestamp=timestamp,
                ttl=None,
                key=key,
                evolve=True,
                route=True,
            )

    def _ingest_locked(
        self,
        frame: pd.DataFrame,
        view: str,
        source: str,
        *,
        entity: list[str] | None,
        timestamp: str | None,
        ttl: dt.timedelta | None,
        key: list[str] | None,
        evolve: bool,
        route: bool,
    ) -> IngestResult:
        sweep_orphans(self.root, view, self._catalog.paths(view))
        latest = self._catalog.get(view)
        if frame.empty:
            if latest is None:
                raise InvalidInputError(f"no rows to ingest into new view {view!r}")
            return IngestResult(view, latest.version, 0, 0, 0, 0, False, latest.fingerprint)

        check_column_names(list(frame.columns))
        if entity is None:
            entity = list(latest.entity) if latest else []
        synthetic = timestamp is None and (latest is None or latest.synthetic_timestamp)
        if timestamp is None:
            timestamp = latest.timestamp if latest else INGESTED_AT
        frame = frame.copy(deep=False)  # columns are replaced below, never the caller's
        if synthetic:
            if timestamp in frame.columns:
                raise InvalidInputError(
                    f"column {timestamp!r} is in the data: pass timestamp={timestamp!r} to use "
                    "it as the event time"
                )
            frame[timestamp] = pd.Timestamp.now(tz="UTC")
        _require_columns(frame, entity, "entity", view)
        _require_columns(frame, [timestamp], "timestamp", view)
        if timestamp in entity:
            raise InvalidInputError(f"column {timestamp!r} cannot be both entity and timestamp")
        for name in entity:
            nulls = int(frame[name].isna().sum())
            if nulls:
                raise InvalidInputError(f"entity column {name!r} has {nulls} missing value(s)")
        frame[timestamp] = to_utc(frame[timestamp], timestamp)
        incoming = infer_types(frame)

        target, created = self._target_version(
            view, latest, frame, incoming, entity, timestamp, synthetic, ttl, key, evolve, route
        )
        table = pa.table(to_arrow_columns(frame, target.schema))
        keys = row_keys(table, target.dedup_columns())
        micros = table.column(timestamp).cast(pa.int64()).to_numpy()
        days = micros // US_PER_DAY
        keep = self._new_rows(target, keys, days)

        accepted = int(keep.sum())
        if accepted < len(keep):
            table, keys, days = table.filter(pa.array(keep)), keys[keep], days[keep]
        seq = self._catalog.next_seq(view)
        table = table.append_column(KEY_COLUMN, pa.array(keys, type=pa.uint64()))
        table = table.append_column(SEQ_COLUMN, pa.array(np.full(accepted, seq, dtype=np.int64)))
        first_row_id = None
        if target.has_row_id:
            first_row_id = self._catalog.next_row_id(view)
            row_ids = np.arange(first_row_id, first_row_id + accepted, dtype=np.int64)
            table = table.append_column(ROW_ID_COLUMN, pa.array(row_ids))

        entries = write_partitions(self.root, view, target.version, seq, table, days, timestamp)
        record = IngestRecord(
            view=view,
            seq=seq,
            version=target.version,
            source=source,
            rows_in=len(frame),
            accepted=accepted,
            duplicates=len(frame) - accepted,
            first_row_id=first_row_id,
        )
        try:
            committed = self._catalog.commit(record, entries, target if created else None)
        except BaseException:
            remove_files(self.root, entries)
            raise
        for entry in committed:
            slot = ALL_DAYS if target.synthetic_timestamp else entry.day
            self._keys.add(view, slot, entry, keys[days == entry.day])
        return IngestResult(
            view=view,
            version=target.version,
            rows=len(frame),
            accepted=accepted,
            duplicates=len(frame) - accepted,
            files=len(entries),
            created_version=created,
            fingerprint=target.fingerprint,
        )

    def _target_version(
        self,
        view: str,
        latest: ViewVersion | None,
        frame: pd.DataFrame,
        incoming: Mapping[str, ColumnType | None],
        entity: list[str],
        timestamp: str,
        synthetic: bool,
        ttl: dt.timedelta | None,
        key: list[str] | None,
        evolve: bool,
        route: bool,
    ) -> tuple[ViewVersion, bool]:
        """The version the rows go to, and whether it is new."""
        if latest is not None:
            problems = _differences(latest, incoming, entity, timestamp, synthetic, ttl, key)
            if not problems:
                return latest, False
            if route:
                for older in reversed(self._catalog.versions(view)[:-1]):
                    if not _differences(older, incoming, entity, timestamp, synthetic, ttl, key):
                        return older, False
            if not evolve:
                raise SchemaMismatchError(
                    f"data for view {view!r} does not match {latest.ref}: "
                    f"{'; '.join(problems)}. Pass evolve=True to create "
                    f"{view}@v{latest.version + 1}",
                    problems=problems,
                    next_ref=f"{view}@v{latest.version + 1}",
                )
        known = latest.types if latest else {}
        types: dict[str, ColumnType] = {}
        for name in frame.columns:
            got, had = incoming[name], known.get(name)
            # Keep the previous type where the data still fits it, so that a new
            # column does not also turn a float feature into an int one.
            types[name] = had if had is not None and fits(got, had) else (got or "float64")
        schema = ViewSchema(
            columns=tuple(Column(name, types[name]) for name in frame.columns),
            entity=tuple(entity),
            timestamp=timestamp,
        )
        key_columns = tuple(key) if key is not None else (latest.key_columns if latest else None)
        if key_columns is not None:
            unknown = [name for name in key_columns if name not in types]
            if unknown:
                raise MissingColumnError(
                    f"key column(s) {unknown} not in the data for view {view!r}"
                )
        version = ViewVersion(
            name=view,
            version=latest.version + 1 if latest else 1,
            schema=schema,
            fingerprint=schema.fingerprint(),
            ttl=ttl if ttl is not None else (latest.ttl if latest else None),
            key_columns=key_columns,
            synthetic_timestamp=synthetic,
            created_at=utc_now_iso(),
        )
        return version, True

    def _new_rows(self, target: ViewVersion, keys: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Mask of rows to store: first of their key in the batch, and not stored before."""
        keep = first_occurrences(keys)
        if target.synthetic_timestamp:
            stored = self._keys.stored(target.name, ALL_DAYS, self._catalog.files(target.name))
            fresh: np.ndarray = keep & ~contains(stored, keys)
            return fresh
        wanted = np.unique(days)
        entries = self._catalog.files(target.name, days=wanted.tolist())
        entries.sort(key=lambda e: e.day)
        by_day = {d: list(g) for d, g in itertools.groupby(entries, key=lambda e: e.day)}
        for day in wanted.tolist():
            if day not in by_day:
                continue
            stored = self._keys.stored(target.name, day, by_day[day])
            mask = days == day
            keep[mask] &= ~contains(stored, keys[mask])
        return keep


def load_frame(data: DataSource) -> tuple[pd.DataFrame, str]:
    """A DataFrame and a description of where it came from (CSV and Parquet files)."""
    if isinstance(data, pd.DataFrame):
        return data, "dataframe"
    if not isinstance(data, (str, os.PathLike)):
        raise InvalidInputError(
            f"data must be a DataFrame or a CSV/Parquet path, got {type(data).__name__}"
        )
    path = Path(data).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            # round_trip: pandas < 3 parses floats with a fast, inexact parser by
            # default, so a CSV and a Parquet file of the same rows would not
            # de-duplicate (seen on pandas 2.3).
            frame = pd.read_csv(
                path, sep="\t" if suffixes.endswith(".tsv") else ",", float_precision="round_trip"
            )
        elif suffixes.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            raise InvalidInputError(
                f"cannot ingest {path.name}: expected a .csv, .csv.gz, .tsv or .parquet file"
            )
    except (OSError, ValueError, pa.ArrowException) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"cannot read {path}: {exc}") from None
    return frame, str(path)


def _column_list(value: Sequence[str] | str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() if isinstance(item, str) else item for item in items]
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise InvalidInputError(f"{what} must name columns, got {value!r}")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"{what} names a column twice: {names}")
    return names


def _optional_name(value: str | None, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInputError(f"{what} must be a column name, got {value!r}")
    return value


def _require_columns(frame: pd.DataFrame, names: Sequence[str], what: str, view: str) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise MissingColumnError(
            f"{what} column(s) {missing} not in the data for view {view!r} "
            f"(columns: {list(frame.columns)})"
        )


def _differences(
    version: ViewVersion,
    incoming: Mapping[str, ColumnType | None],
    entity: Sequence[str],
    timestamp: str,
    synthetic: bool,
    ttl: dt.timedelta | None,
    key: Sequence[str] | None,
) -> list[str]:
    problems = diff(version.schema, incoming)
    if tuple(entity) != version.entity:
        problems.append(f"entity {list(version.entity)} -> {list(entity)}")
    if timestamp != version.timestamp or synthetic != version.synthetic_timestamp:
        before = "(ingest time)" if version.synthetic_timestamp else repr(version.timestamp)
        after = "(ingest time)" if synthetic else repr(timestamp)
        problems.append(f"timestamp {before} -> {after}")
    if ttl is not None and ttl != version.ttl:
        problems.append(f"ttl {format_ttl(version.ttl)} -> {format_ttl(ttl)}")
    if key is not None and tuple(key) != version.key_columns:
        old_key = list(version.key_columns) if version.key_columns else "(all columns)"
        problems.append(f"key {old_key} -> {list(key)}")
    return problems
