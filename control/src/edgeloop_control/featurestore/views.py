"""Views and their versions: the catalogue side of the feature store.

:class:`ViewCatalogue` opens a store's parts (catalogue, online store, key
index) under its root and answers what views and versions exist, which files
hold them, and tidies them (sweep, compact). Writing and reading build on it
(:mod:`.writes`, :mod:`.reads`); :class:`~.store.FeatureStore` puts them together.

On-disk layout under the store root::

    catalog.sqlite                      views, versions, ingests, committed files
    online.sqlite                       latest row per entity, one table per view version
    offline/<view>/v<N>/date=YYYY-MM-DD/part-<seq>-<rand>.parquet
    locks/<view>.lock                   per-view writer lock
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from edgeloop_control.featurestore.catalog import Catalog, FileEntry, PartitionStats, ViewVersion
from edgeloop_control.featurestore.dedup import KeyIndex
from edgeloop_control.featurestore.errors import InvalidInputError, UnknownViewError
from edgeloop_control.featurestore.offline import (
    OFFLINE_DIR,
    merge_files,
    remove_files,
    sweep_orphans,
    view_lock,
)
from edgeloop_control.featurestore.online import OnlineStore
from edgeloop_control.featurestore.refs import ViewRef, check_view_name, parse_view_ref

CATALOG_FILE = "catalog.sqlite"
ONLINE_FILE = "online.sqlite"


class ViewCatalogue:
    """The store's parts and its catalogue of views, versions and files.

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
        return f"{type(self).__name__}({str(self.root)!r})"

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
