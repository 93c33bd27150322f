"""What a run and a push look like to callers: :class:`RunInfo`, :class:`PushResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOCAL_FORMAT = 1
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True)
class RunInfo:
    """One tracking run, from a server or the workspace."""

    run_id: str
    # Name of the MLflow experiment the run belongs to ("experiment" in JSON
    # output and run.json, as MLflow calls it).
    mlflow_experiment: str
    run_name: str | None
    status: str
    start_time: int  # ms since the epoch, as MLflow counts
    end_time: int | None
    # None for a run kept in the workspace.
    tracking_uri: str | None
    # ``runs:/<id>`` on an MLflow server, a file:// URI for a workspace run.
    uri: str
    # Web page of the run, for http(s) tracking servers.
    url: str | None = None
    # Workspace runs only: tracking URI -> remote run id.
    pushed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment": self.mlflow_experiment,
            "run_name": self.run_name,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "tracking_uri": self.tracking_uri,
            "uri": self.uri,
            "url": self.url,
            "pushed": dict(self.pushed),
        }


@dataclass(frozen=True)
class PushResult:
    """What pushing one workspace run to a server did."""

    local_run_id: str
    mlflow_experiment: str  # its MLflow experiment's name
    # pushed | already-pushed | skipped
    status: str
    remote_run_id: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_run_id": self.local_run_id,
            "experiment": self.mlflow_experiment,
            "status": self.status,
            "remote_run_id": self.remote_run_id,
            "reason": self.reason,
        }
