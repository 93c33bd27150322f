"""Replaying workspace runs to an MLflow server, each at most once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop_control.tracking.localruns import LocalRunFiles, process_alive
from edgeloop_control.tracking.mlflowapi import (
    call_mlflow,
    check_uri,
    chunks,
    mlflow_client,
    mlflow_experiment_id,
    terminate_run,
)
from edgeloop_control.tracking.records import PushResult
from edgeloop_control.tracking.rules import METRICS_PER_BATCH, PARAMS_TAGS_PER_BATCH, now_ms
from edgeloop_control.tracking.tags import TAG_LOCAL_RUN_ID

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class LocalRunStore(LocalRunFiles):
    """Runs kept in the workspace, and their replay to an MLflow server."""

    def push(self, to_uri: str, *, mlflow_experiment: str | None = None) -> list[PushResult]:
        """Replay finished runs to the MLflow server at ``to_uri``; idempotent."""
        to_uri = check_uri(to_uri)
        results = []
        client: MlflowClient | None = None
        for run_dir in sorted(self.run_dirs(), key=lambda d: self.read_record(d)["start_time"]):
            record = self.read_record(run_dir)
            if mlflow_experiment is not None and record["experiment"] != mlflow_experiment:
                continue
            done = record.get("pushed", {}).get(to_uri)
            if done:
                results.append(
                    PushResult(
                        record["run_id"], record["experiment"], "already-pushed", done["run_id"]
                    )
                )
                continue
            if record["status"] == "RUNNING":
                if process_alive(record):
                    results.append(
                        PushResult(
                            record["run_id"],
                            record["experiment"],
                            "skipped",
                            reason="the run is still in progress",
                        )
                    )
                    continue
                # Its process is gone without ending the run: record it as MLflow would.
                record["status"] = "KILLED"
                record["end_time"] = record.get("end_time") or now_ms()
                self.write_record(run_dir, record)
            if client is None:
                client = mlflow_client(to_uri)
            remote_id, experiment_id, fresh = self._replay(client, to_uri, run_dir, record)
            record.setdefault("pushed", {})[to_uri] = {
                "run_id": remote_id,
                "experiment_id": experiment_id,
                "pushed_at": now_ms(),
            }
            self.write_record(run_dir, record)
            results.append(
                PushResult(
                    record["run_id"],
                    record["experiment"],
                    "pushed" if fresh else "already-pushed",
                    remote_id,
                )
            )
        return results

    def _replay(
        self, client: MlflowClient, uri: str, run_dir: Path, record: dict[str, Any]
    ) -> tuple[str, str, bool]:
        from mlflow.entities import Metric, Param, ViewType

        experiment_id = mlflow_experiment_id(client, uri, record["experiment"])
        local_id = record["run_id"]
        # A push interrupted after creating the remote run left a RUNNING run
        # tagged with our id: a finished one means the push had completed.
        existing = call_mlflow(
            uri,
            client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{TAG_LOCAL_RUN_ID}` = '{local_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
        )
        for run in existing:
            if run.info.status != "RUNNING":
                return run.info.run_id, experiment_id, False
            call_mlflow(uri, client.delete_run, run.info.run_id)

        tags = {**record.get("tags", {}), TAG_LOCAL_RUN_ID: local_id}
        created = call_mlflow(
            uri,
            client.create_run,
            experiment_id,
            start_time=record["start_time"],
            tags=tags,
            run_name=record.get("run_name"),
        )
        run_id = created.info.run_id
        params = [Param(k, v) for k, v in record.get("params", {}).items()]
        for chunk in chunks(params, PARAMS_TAGS_PER_BATCH):
            call_mlflow(uri, client.log_batch, run_id, params=chunk)
        metrics = [Metric(k, v, stamp, step) for k, v, step, stamp in self.read_metrics(run_dir)]
        for chunk in chunks(metrics, METRICS_PER_BATCH):
            call_mlflow(uri, client.log_batch, run_id, metrics=chunk)
        artifacts = run_dir / "artifacts"
        if artifacts.is_dir() and any(artifacts.iterdir()):
            call_mlflow(uri, client.log_artifacts, run_id, str(artifacts))
        # Last: a terminated remote run is the marker of a complete push.
        terminate_run(client, uri, run_id, record["status"], record.get("end_time") or now_ms())
        return run_id, experiment_id, True
