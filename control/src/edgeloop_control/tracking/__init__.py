"""Run tracking through MLflow's client API, with a workspace fallback.

"Experiment" here always means an *MLflow (tracking) experiment*: the named
group of training runs on a tracking server. It is neither an A/B test
(``policies/experiments``) nor the router's hash id (``experiment_id`` in
desired state).

With a tracking URI (``[tracking] uri`` in edgeloop.toml, else
``$MLFLOW_TRACKING_URI``) every run goes straight to that MLflow server through
``mlflow.tracking.MlflowClient`` (mlflow-skinny is enough). Without one, runs are
kept in the workspace under ``tracking/runs/<run_id>/`` (layout below) and
:func:`push_local_runs` replays them to a server later, once: the remote run id
is recorded, and the remote run carries the local id as tag
``edgeloop.local_run_id`` so even a push interrupted half-way is never doubled.

Local layout (format 1)::

    tracking/runs/<run_id>/run.json       id, experiment (the MLflow experiment's
                                          name), name, status, times, params, tags,
                                          pushed {uri: remote run}
    tracking/runs/<run_id>/metrics.jsonl  one {"key","value","step","timestamp"} a line
    tracking/runs/<run_id>/artifacts/...  logged files, by artifact name

Keys and values are validated with MLflow's own rules when they are logged, so
a local run that was accepted is also accepted by the server when replayed.

Modules, lowest first:

    errors.py     TrackingError
    tags.py       the tag names edgeloop sets (docs/tracking.md)
    rules.py      MLflow's limits and rules for keys, values, artifact names
    records.py    RunInfo, PushResult: what callers get back
    run.py        Run: the handle start_run yields, validating, back-end neutral
    mlflowapi.py  the MLflow client, its errors as one line, MlflowRun
    localruns.py  LocalRunFiles, LocalRun: runs kept in the workspace
    replay.py     LocalRunStore: workspace runs plus their push to a server
    tracker.py    Tracker and push_local_runs: the entry points
"""

from edgeloop_control.tracking.errors import TrackingError
from edgeloop_control.tracking.localruns import LocalRun, LocalRunFiles
from edgeloop_control.tracking.mlflowapi import MlflowRun
from edgeloop_control.tracking.records import LOCAL_FORMAT, STATUSES, PushResult, RunInfo
from edgeloop_control.tracking.replay import LocalRunStore
from edgeloop_control.tracking.run import Run
from edgeloop_control.tracking.tags import (
    TAG_DATA_HASH,
    TAG_FEATURE_VIEW,
    TAG_FEATURE_VIEW_VERSION,
    TAG_LOCAL_RUN_ID,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_REGISTRY_COMMIT,
    TAG_ROWS,
    TAG_RUN_NAME,
    TAG_SHA256,
    TAG_USER,
)
from edgeloop_control.tracking.tracker import Tracker, push_local_runs

__all__ = [
    "LOCAL_FORMAT",
    "STATUSES",
    "TAG_DATA_HASH",
    "TAG_FEATURE_VIEW",
    "TAG_FEATURE_VIEW_VERSION",
    "TAG_LOCAL_RUN_ID",
    "TAG_MODEL",
    "TAG_MODEL_VERSION",
    "TAG_REGISTRY_COMMIT",
    "TAG_ROWS",
    "TAG_RUN_NAME",
    "TAG_SHA256",
    "TAG_USER",
    "LocalRun",
    "LocalRunFiles",
    "LocalRunStore",
    "MlflowRun",
    "PushResult",
    "Run",
    "RunInfo",
    "Tracker",
    "TrackingError",
    "push_local_runs",
]
