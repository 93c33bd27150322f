"""The tracker: runs to an MLflow server, or to the workspace when none is configured."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from edgeloop_control.tracking.errors import TrackingError
from edgeloop_control.tracking.mlflowapi import (
    MlflowRun,
    call_mlflow,
    check_uri,
    mlflow_client,
    mlflow_experiment_id,
    run_url,
)
from edgeloop_control.tracking.records import PushResult, RunInfo
from edgeloop_control.tracking.replay import LocalRunStore
from edgeloop_control.tracking.rules import MAX_TAG_VALUE, check_key, check_text, current_user
from edgeloop_control.tracking.run import Run
from edgeloop_control.tracking.tags import TAG_USER

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from edgeloop_control.infra.workspace import Workspace


class Tracker:
    """Logs runs to an MLflow tracking server, or to the workspace when ``uri`` is None."""

    def __init__(self, uri: str | None, local_dir: str | os.PathLike[str]) -> None:
        self.uri = check_uri(uri) if uri else None
        self.local = LocalRunStore(local_dir)
        self._client: MlflowClient | None = None

    @classmethod
    def for_workspace(cls, ws: Workspace) -> Tracker:
        return cls(ws.tracking_uri, ws.local_runs_dir)

    @property
    def is_local(self) -> bool:
        return self.uri is None

    @property
    def client(self) -> MlflowClient:
        if self.uri is None:
            raise TrackingError("no tracking URI configured; runs are kept in the workspace")
        if self._client is None:
            self._client = mlflow_client(self.uri)
        return self._client

    @contextlib.contextmanager
    def start_run(
        self,
        mlflow_experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Iterator[Run]:
        """A run in the MLflow experiment ``mlflow_experiment`` (created if missing)
        that ends FINISHED, or FAILED (KILLED on Ctrl-C) if the block raises."""
        if not isinstance(mlflow_experiment, str) or not mlflow_experiment.strip():
            raise TrackingError(
                f"MLflow experiment name must be a non-empty string, got {mlflow_experiment!r}"
            )
        if run_name is not None and not isinstance(run_name, str):
            raise TrackingError(f"run_name must be a string, got {run_name!r}")
        checked = {
            check_key("tag", k): check_text("tag", k, v, MAX_TAG_VALUE)
            for k, v in (tags or {}).items()
        }
        run = self._create(mlflow_experiment, run_name, checked)
        try:
            yield run
        except Exception:
            run._end("FAILED")
            raise
        except BaseException:
            run._end("KILLED")
            raise
        run._end("FINISHED")

    def _create(self, mlflow_experiment: str, run_name: str | None, tags: dict[str, str]) -> Run:
        if self.uri is None:
            return self.local.create(mlflow_experiment, run_name, tags)
        client = self.client
        experiment_id = mlflow_experiment_id(client, self.uri, mlflow_experiment)
        created = call_mlflow(
            self.uri,
            client.create_run,
            experiment_id,
            tags={TAG_USER: current_user(), **tags},
            run_name=run_name,
        )
        run_id = created.info.run_id
        info = RunInfo(
            run_id=run_id,
            mlflow_experiment=mlflow_experiment,
            run_name=created.info.run_name,
            status=created.info.status,
            start_time=created.info.start_time,
            end_time=None,
            tracking_uri=self.uri,
            uri=f"runs:/{run_id}",
            url=run_url(self.uri, experiment_id, run_id),
        )
        return MlflowRun(client, info)

    def list_runs(
        self, mlflow_experiment: str | None = None, *, max_results: int = 100
    ) -> list[RunInfo]:
        """Most recent first, of one MLflow experiment or all: from the server, or
        from the workspace in local mode."""
        if self.uri is None:
            return self.local.list_runs(mlflow_experiment)[:max_results]
        client = self.client
        if mlflow_experiment is not None:
            found = call_mlflow(self.uri, client.get_experiment_by_name, mlflow_experiment)
            experiments = [found] if found is not None else []
        else:
            experiments = list(call_mlflow(self.uri, client.search_experiments))
        if not experiments:
            return []
        names = {e.experiment_id: e.name for e in experiments}
        runs = call_mlflow(
            self.uri,
            client.search_runs,
            list(names),
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
        return [
            RunInfo(
                run_id=r.info.run_id,
                mlflow_experiment=names.get(r.info.experiment_id, r.info.experiment_id),
                run_name=r.info.run_name,
                status=r.info.status,
                start_time=r.info.start_time,
                end_time=r.info.end_time,
                tracking_uri=self.uri,
                uri=f"runs:/{r.info.run_id}",
                url=run_url(self.uri, r.info.experiment_id, r.info.run_id),
            )
            for r in runs
        ]


def push_local_runs(
    ws: Workspace, to_uri: str, *, mlflow_experiment: str | None = None
) -> list[PushResult]:
    """Replay the workspace's local runs (of one MLflow experiment, or all) to
    ``to_uri``, each run at most once."""
    return LocalRunStore(ws.local_runs_dir).push(to_uri, mlflow_experiment=mlflow_experiment)
