"""``FeatureStore``: versioned feature views over a Parquet offline store and a SQLite online store.

The class is assembled from one module per concern, each building on
:class:`~.views.ViewCatalogue` (the store's parts and its catalogue):

    views.py        views, versions, files; sweep and compact
    writes.py       ingest: schema versions, de-duplication, committing files
    reads.py        rows in a time range; point-in-time training sets
    onlineviews.py  materialise the latest row per entity; read it by key
    captured.py     agents' captured samples and feedback labels

See views.py for the on-disk layout.
"""

from __future__ import annotations

from edgeloop_control.featurestore.captured import CapturedSamples
from edgeloop_control.featurestore.onlineviews import OnlineViews


class FeatureStore(CapturedSamples, OnlineViews):
    """Versioned feature views with point-in-time training sets and an online store.

    ``root`` is a directory or a ``file://`` URI; it is created if missing.
    Methods taking a view reference accept ``"name"`` (latest version) or
    ``"name@vN"``.
    """
