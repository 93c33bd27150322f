"""The offline store: Parquet files under ``offline/<view>/v<N>/date=YYYY-MM-DD/``.

Writes follow the classic recipe for crash-safe appends: write to a temporary
name, fsync, rename into place, fsync the directory, and only then let the
catalogue list the file. A crash at any point leaves at worst a temporary or an
uncatalogued file, both invisible to readers and removed by :func:`sweep_orphans`
at the next ingest of that view (which holds the view's lock, so it can never
delete the files of an ingest in flight).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import itertools
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from edgeloop_control.featurestore.catalog import FileEntry
from edgeloop_control.featurestore.schema import ROW_ID_COLUMN

OFFLINE_DIR = "offline"
LOCK_DIR = "locks"
TMP_SUFFIX = ".tmp"
# zstd level 1 writes about as fast as snappy and gives smaller files, which
# matters on the small disks edgeloop control nodes run on.
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1
_EPOCH = dt.date(1970, 1, 1)


def day_label(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=int(day))).isoformat()


def version_dir(view: str, version: int) -> str:
    return f"{OFFLINE_DIR}/{view}/v{version}"


@contextmanager
def view_lock(root: Path, view: str) -> Iterator[None]:
    """Exclusive per-view writer lock, across threads and processes (readers never lock)."""
    directory = root / LOCK_DIR
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{view}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_partitions(
    root: Path,
    view: str,
    version: int,
    seq: int,
    table: pa.Table,
    days: np.ndarray,
    timestamp: str,
) -> list[FileEntry]:
    """Write ``table`` as one file per event date; return the (uncommitted) entries."""
    if table.num_rows == 0:
        return []
    order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_days)) + 1).tolist(), len(days)]
    if len(bounds) > 2:
        # One gather, then zero-copy slices, instead of a gather per date.
        table = table.take(pa.array(order))
    entries: list[FileEntry] = []
    directories: set[Path] = set()
    try:
        for lo, hi in itertools.pairwise(bounds):
            part = table.slice(lo, hi - lo)
            day = int(sorted_days[lo])
            relative = (
                f"{version_dir(view, version)}/date={day_label(day)}/"
                f"part-{seq:08d}-{uuid.uuid4().hex[:8]}.parquet"
            )
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(part, path)
            directories.add(path.parent)
            bounds_ts = pc.min_max(part.column(timestamp).cast(pa.int64()))
            entries.append(
                FileEntry(
                    path=relative,
                    view=view,
                    version=version,
                    day=day,
                    rows=part.num_rows,
                    min_ts=bounds_ts["min"].as_py(),
                    max_ts=bounds_ts["max"].as_py(),
                    seq=seq,
                )
            )
        for directory in directories:
            _fsync_dir(directory)
    except BaseException:
        remove_files(root, entries)
        raise
    return entries


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(
                table,
                handle,
                compression=COMPRESSION,
                compression_level=COMPRESSION_LEVEL,
                use_dictionary=_dictionary_columns(table.schema),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Dictionary-encode keys, labels and flags; not floats or times, where it
    rarely pays and costs a failed attempt per column chunk."""
    return [
        f.name
        for f in schema
        if (pa.types.is_string(f.type) or pa.types.is_boolean(f.type) or f.type == pa.int64())
        and f.name != ROW_ID_COLUMN
    ]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def merge_files(root: Path, entries: Sequence[FileEntry], schema: pa.Schema) -> FileEntry:
    """Write the rows of ``entries`` (one view version and date), in order, to one new file.

    Streams file by file, so memory stays bounded by the largest input file.
    """
    first = entries[0]
    relative = (
        f"{version_dir(first.view, first.version)}/date={day_label(first.day)}/"
        f"part-{max(e.seq for e in entries):08d}-{uuid.uuid4().hex[:8]}.parquet"
    )
    path = root / relative
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as handle:
            with pq.ParquetWriter(
                handle,
                schema,
                compression=COMPRESSION,
                compression_level=COMPRESSION_LEVEL,
                use_dictionary=_dictionary_columns(schema),
            ) as writer:
                for entry in entries:
                    writer.write_table(pq.read_table(root / entry.path, schema=schema))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileEntry(
        path=relative,
        view=first.view,
        version=first.version,
        day=first.day,
        rows=sum(e.rows for e in entries),
        min_ts=min(e.min_ts for e in entries),
        max_ts=max(e.max_ts for e in entries),
        seq=max(e.seq for e in entries),
    )


def remove_files(root: Path, entries: Sequence[FileEntry]) -> None:
    for entry in entries:
        (root / entry.path).unlink(missing_ok=True)


def sweep_orphans(root: Path, view: str, committed: set[str]) -> list[str]:
    """Delete files under the view's directory that the catalogue does not list.

    Call only while holding :func:`view_lock` for ``view``.
    """
    base = root / OFFLINE_DIR / view
    if not base.is_dir():
        return []
    removed = []
    for path in base.rglob("*"):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if relative not in committed:
            path.unlink(missing_ok=True)
            removed.append(relative)
    return removed


def read_files(
    root: Path,
    entries: Sequence[FileEntry],
    schema: pa.Schema,
    columns: Sequence[str],
    filter: pc.Expression | None = None,
) -> pa.Table:
    """Read ``columns`` of the listed files only, pushing ``filter`` down to Parquet."""
    wanted = pa.schema([schema.field(name) for name in columns])
    if not entries:
        return wanted.empty_table()
    dataset = ds.dataset(
        [str(root / entry.path) for entry in entries], schema=schema, format="parquet"
    )
    return dataset.to_table(columns=list(columns), filter=filter)


def read_keys(root: Path, entry: FileEntry, key_column: str) -> np.ndarray:
    table = pq.read_table(root / entry.path, columns=[key_column])
    return table.column(key_column).to_numpy()
