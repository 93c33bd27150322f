"""Tags edgeloop sets on tracking runs, and the MLflow ones it reads (see docs/tracking.md)."""

from __future__ import annotations

# Tags the training code sets on its runs (see docs/tracking.md).
TAG_REGISTRY_COMMIT = "edgeloop.registry_commit"
TAG_FEATURE_VIEW = "edgeloop.feature_view"
TAG_FEATURE_VIEW_VERSION = "edgeloop.feature_view_version"
TAG_DATA_HASH = "edgeloop.data_hash"
TAG_MODEL_VERSION = "edgeloop.model_version"
TAG_MODEL = "edgeloop.model"
TAG_SHA256 = "edgeloop.sha256"
TAG_ROWS = "edgeloop.rows"
TAG_LOCAL_RUN_ID = "edgeloop.local_run_id"
TAG_RUN_NAME = "mlflow.runName"
TAG_USER = "mlflow.user"
