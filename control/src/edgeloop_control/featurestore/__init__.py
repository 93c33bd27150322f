"""The versioned feature store: Parquet offline store, SQLite catalogue and online store.

>>> store = FeatureStore(workspace.feature_store_dir)
>>> store.ingest(df, "sensors", entity=["device"], timestamp="ts", ttl="7d")
>>> train = store.training_set(labels, timestamp="ts", features=["sensors:temp"])

See docs/feature-store.md for the concepts, layout and semantics, and store.py
for which module owns what. The store sees rows and records only: samples and
labels arriving over MQTT are unwrapped by the fleet layer (fleet/captured.py).
"""

from edgeloop_control.featurestore.captured import (
    CAPTURED_PREFIX,
    LABELS_VIEW,
    captured_training_frame,
    captured_view,
    ingest_labels,
    ingest_samples,
)
from edgeloop_control.featurestore.catalog import FileEntry, PartitionStats, ViewVersion
from edgeloop_control.featurestore.errors import (
    FeatureStoreError,
    InvalidInputError,
    MissingColumnError,
    SchemaMismatchError,
    TimestampError,
    UnknownViewError,
)
from edgeloop_control.featurestore.hashing import data_hash
from edgeloop_control.featurestore.schema import Column, ColumnType, ViewSchema
from edgeloop_control.featurestore.store import FeatureStore
from edgeloop_control.featurestore.writes import IngestResult

__all__ = [
    "CAPTURED_PREFIX",
    "LABELS_VIEW",
    "Column",
    "ColumnType",
    "FeatureStore",
    "FeatureStoreError",
    "FileEntry",
    "IngestResult",
    "InvalidInputError",
    "MissingColumnError",
    "PartitionStats",
    "SchemaMismatchError",
    "TimestampError",
    "UnknownViewError",
    "ViewSchema",
    "ViewVersion",
    "captured_training_frame",
    "captured_view",
    "data_hash",
    "ingest_labels",
    "ingest_samples",
]
