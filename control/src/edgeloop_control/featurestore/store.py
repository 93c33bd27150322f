"""``FeatureStore``: versioned feature views over a Parquet offline store and a SQLite online store.

On-disk layout under the store root::

    catalog.sqlite                      views, versions, ingests, committed files
    online.sqlite                       latest row per entity, one table per view version
    offline/<view>/v<N>/date=YYYY-MM-DD/part-<seq>-<rand>.parquet
    locks/<view>.lock                   per-view writer lock
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from edgeloop_control.featurestore.catalog import (
    Catalog,
    FileEntry,
    IngestRecord,
    PartitionStats,
    ViewVersion,
    utc_now_iso,
)
from edgeloop_control.featurestore.dedup import ALL_DAYS, KeyIndex, contains, first_occurrences
from edgeloop_control.featurestore.errors import (
    InvalidInputError,
    MissingColumnError,
    SchemaMismatchError,
    UnknownViewError,
)
from edgeloop_control.featurestore.hashing import row_keys
from edgeloop_control.featurestore.offline import (
    OFFLINE_DIR,
    merge_files,
    read_files,
    remove_files,
    sweep_orphans,
    view_lock,
    write_partitions,
)
from edgeloop_control.featurestore.online import OnlineStore
from edgeloop_control.featurestore.pointintime import (
    SPINE_POS,
    SPINE_TS,
    align_entity,
    asof_join,
    build_spine,
)
from edgeloop_control.featurestore.refs import (
    ViewRef,
    check_view_name,
    parse_feature_ref,
    parse_view_ref,
)
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
from edgeloop_control.featurestore.timestamps import (
    US_PER_DAY,
    format_ttl,
    parse_instant,
    parse_ttl,
    to_micros,
    to_utc,
)

CATALOG_FILE = "catalog.sqlite"
_READ_ATTEMPTS = 3
ONLINE_FILE = "online.sqlite"
# Event-time column stamped at ingest for views ingested without a timestamp.
INGESTED_AT = "ingested_at"

DataSource = pd.DataFrame | str | os.PathLike[str]


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


class FeatureStore:
    """Versioned feature views with point-in-time training sets and an online store.

    ``root`` is a directory or a ``file://`` URI; it is created if missing.
    Methods taking a view reference accept ``"name"`` (latest version) or
    ``"name@vN"``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _resolve_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._catalog = Catalog(self.root / CATALOG_FILE)
        self._online = OnlineStore(self.root / ONLINE_FILE)
        self._keys = KeyIndex(self.root)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # -- ingestion ---------------------------------------------------------------

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
            return keep & ~contains(stored, keys)
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

    # -- catalogue -----------------------------------------------------------------

    def views(self) -> list[str]:
        """Names of all views."""
        return self._catalog.view_names()

    def versions(self, view: str) -> list[ViewVersion]:
        """Every version of a view, oldest first."""
        found = self._catalog.versions(check_view_name(view))
        if not found:
            raise self._unknown(view)
        return found

    def view(self, ref: str | ViewRef) -> ViewVersion:
        """One version of a view: ``"name"`` (latest) or ``"name@vN"``."""
        parsed = ref if isinstance(ref, ViewRef) else parse_view_ref(ref)
        found = self._catalog.get(parsed.name, parsed.version)
        if found is not None:
            return found
        versions = self._catalog.versions(parsed.name)
        if not versions:
            raise self._unknown(parsed.name)
        raise UnknownViewError(
            f"view {parsed.name!r} has no version v{parsed.version} "
            f"(versions: {', '.join(f'v{v.version}' for v in versions)})"
        )

    def _unknown(self, name: str) -> UnknownViewError:
        names = self._catalog.view_names()
        known = f"known views: {', '.join(names)}" if names else "the store has no views yet"
        return UnknownViewError(f"unknown view {name!r} ({known})")

    def partitions(self, ref: str | ViewRef) -> list[PartitionStats]:
        """Per event date of one version: files, rows and time bounds."""
        found = self.view(ref)
        return self._catalog.partitions(found.name, found.version)

    def files(self, ref: str | ViewRef) -> list[FileEntry]:
        """Committed Parquet files of one version (paths relative to :attr:`root`)."""
        found = self.view(ref)
        return self._catalog.files(found.name, found.version)

    def sweep(self) -> list[str]:
        """Delete temporary and uncatalogued files left by crashed ingests; return their paths."""
        base = self.root / OFFLINE_DIR
        removed: list[str] = []
        if not base.is_dir():
            return removed
        for directory in sorted(p for p in base.iterdir() if p.is_dir()):
            with view_lock(self.root, directory.name):
                removed += sweep_orphans(
                    self.root, directory.name, self._catalog.paths(directory.name)
                )
        return removed

    def compact(self, view: str) -> tuple[int, int]:
        """Merge each event date's files into one, per version; return (files before, after).

        Ingesting small batches (captured samples arrive every few seconds)
        leaves many small files; reading and de-duplicating get slower with
        their number. Rows, their order and their ingest sequence are kept, so
        reads, ties and online values are unchanged. Safe alongside readers:
        one that listed a replaced file re-lists from the catalogue.
        """
        check_view_name(view)
        before = after = 0
        with view_lock(self.root, view):
            for version in self.versions(view):
                entries = sorted(
                    self._catalog.files(view, version.version), key=lambda e: (e.day, e.seq, e.id)
                )
                for _, group in itertools.groupby(entries, key=lambda e: e.day):
                    files = list(group)
                    before += len(files)
                    after += 1
                    if len(files) < 2:
                        continue
                    schema = version.schema.arrow_schema(row_id=version.has_row_id)
                    merged = merge_files(self.root, files, schema)
                    try:
                        self._catalog.replace(files, merged)
                    except BaseException:
                        remove_files(self.root, [merged])
                        raise
                    remove_files(self.root, files)
        return before, after

    # -- reading -------------------------------------------------------------------

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

    # -- online store --------------------------------------------------------------

    def materialize(self, ref: str | ViewRef, start: Any = None, end: Any = None) -> int:
        """Copy the latest row per entity with event time in ``[start, end)`` online.

        Returns the number of entities whose online row changed. Works one event
        date at a time, newest first, to bound memory: older dates then only
        fill in entities the newer ones did not have.
        """
        found = self.view(ref)
        _require_entity(found, "materialised")
        lo, hi = parse_instant(start, "start"), parse_instant(end, "end")
        entries = self._catalog.files(
            found.name,
            found.version,
            start_us=None if lo is None else to_micros(lo),
            end_us=None if hi is None else to_micros(hi),
        )
        columns = [*found.entity, found.timestamp, SEQ_COLUMN, *found.features]
        written = 0
        for day in sorted({e.day for e in entries}, reverse=True):
            frame = self._scan(found, columns, lo, hi, days=[day])
            newest = frame.sort_values([found.timestamp, SEQ_COLUMN], kind="stable")
            newest = newest.drop_duplicates(list(found.entity), keep="last")
            written += self._online.upsert(found, newest)
        return written

    def get_online(self, ref: str | ViewRef, keys: Sequence[Any] | Any) -> list[dict[str, Any]]:
        """Latest materialised values for each entity key, in key order.

        A key is a scalar (single entity column), a tuple in entity-column order
        or a mapping. Each result holds the entity columns, the event timestamp
        and the features; for an entity never materialised, or whose row is older
        than the view's TTL, the timestamp and features are ``None``.
        """
        found = self.view(ref)
        _require_entity(found, "read online")
        if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Sequence):
            keys = [keys]
        normalized = [_entity_key(found, key) for key in keys]
        rows = self._online.get(found, normalized)
        now = pd.Timestamp.now(tz="UTC")
        out = []
        for key, row in zip(normalized, rows, strict=True):
            record: dict[str, Any] = dict(zip(found.entity, key, strict=True))
            if row is not None and found.ttl is not None and now - row[found.timestamp] > found.ttl:
                row = None
            if row is None:
                record[found.timestamp] = None
                record.update({name: None for name in found.features})
            else:
                record.update(row)
            out.append(record)
        return out

    def online_misses(self, ref: str | ViewRef, keys: Sequence[Any] | Any) -> dict[str, int]:
        """Why keys have no online values: counts of ``expired`` (older than the TTL),
        ``unknown`` (not in the materialised rows) and ``not_materialised`` (the view
        never was)."""
        found = self.view(ref)
        _require_entity(found, "read online")
        if isinstance(keys, (str, bytes, Mapping)) or not isinstance(keys, Sequence):
            keys = [keys]
        normalized = [_entity_key(found, key) for key in keys]
        if not self._online.has_table(found):
            return {"not_materialised": len(normalized)}
        now = pd.Timestamp.now(tz="UTC")
        out = {"expired": 0, "unknown": 0}
        for row in self._online.get(found, normalized):
            if row is None:
                out["unknown"] += 1
            elif found.ttl is not None and now - row[found.timestamp] > found.ttl:
                out["expired"] += 1
        return out

    # -- captured samples (see captured.py) ----------------------------------------

    def ingest_samples(self, records: Sequence[Any], **kwargs: Any) -> tuple[int, int]:
        """Store agents' captured samples; see :func:`.captured.ingest_samples`."""
        from edgeloop_control.featurestore.captured import ingest_samples

        return ingest_samples(self, records, **kwargs)

    def ingest_labels(self, records: Sequence[Any], **kwargs: Any) -> tuple[int, int]:
        """Store feedback labels; see :func:`.captured.ingest_labels`."""
        from edgeloop_control.featurestore.captured import ingest_labels

        return ingest_labels(self, records, **kwargs)

    def ingest_messages(
        self, messages: Sequence[tuple[str, Any]], **kwargs: Any
    ) -> dict[str, tuple[int, int]]:
        """Store MQTT sample/label messages; see :func:`.captured.ingest_messages`."""
        from edgeloop_control.featurestore.captured import ingest_messages

        return ingest_messages(self, messages, **kwargs)

    def captured_training_frame(
        self, model: str, since: Any = None, until: Any = None
    ) -> pd.DataFrame:
        """Labelled captured samples of ``model``; see :func:`.captured.captured_training_frame`."""
        from edgeloop_control.featurestore.captured import captured_training_frame

        return captured_training_frame(self, model, since=since, until=until)


# -- helpers -------------------------------------------------------------------------


def _resolve_root(root: str | os.PathLike[str]) -> Path:
    if isinstance(root, str) and "://" in root:
        parsed = urlparse(root)
        if parsed.scheme != "file":
            raise InvalidInputError(
                f"feature store URI scheme {parsed.scheme!r} is not supported yet; "
                "use a local path or a file:// URI"
            )
        return Path(unquote(parsed.path)).expanduser().resolve()
    if not isinstance(root, (str, os.PathLike)):
        raise InvalidInputError(f"feature store root must be a path, got {root!r}")
    return Path(root).expanduser().resolve()


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


def _require_entity(found: ViewVersion, action: str) -> None:
    if not found.entity:
        raise InvalidInputError(f"view {found.ref} has no entity columns, so it cannot be {action}")


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
        before = list(version.key_columns) if version.key_columns else "(all columns)"
        problems.append(f"key {before} -> {list(key)}")
    return problems


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


def _entity_key(found: ViewVersion, key: Any) -> tuple[Any, ...]:
    entity = found.entity
    if isinstance(key, Mapping):
        missing = [name for name in entity if name not in key]
        if missing:
            raise InvalidInputError(f"key {key!r} lacks entity column(s) {missing} of {found.ref}")
        values = [key[name] for name in entity]
    elif isinstance(key, (tuple, list)):
        values = list(key)
    else:
        values = [key]
    if len(values) != len(entity):
        raise InvalidInputError(
            f"key {key!r} has {len(values)} value(s) but {found.ref} is keyed by {list(entity)}"
        )
    out: list[Any] = []
    for name, value in zip(entity, values, strict=True):
        if found.types[name] == "int64":
            try:
                as_int = int(value)
                if isinstance(value, bool) or as_int != float(value):
                    raise ValueError
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"entity {name!r} of {found.ref} is an integer, got {value!r}"
                ) from None
            out.append(as_int)
        elif isinstance(value, str):
            out.append(value)
        else:
            raise InvalidInputError(f"entity {name!r} of {found.ref} is a string, got {value!r}")
    return tuple(out)
