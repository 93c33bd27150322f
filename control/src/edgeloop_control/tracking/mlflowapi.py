"""MLflow plumbing: the client, its errors as one line, MLflow experiments by name,
and :class:`MlflowRun`, the run back end that logs to a server."""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop_control.tracking.errors import TrackingError
from edgeloop_control.tracking.records import RunInfo
from edgeloop_control.tracking.rules import METRICS_PER_BATCH, PARAMS_TAGS_PER_BATCH, now_ms
from edgeloop_control.tracking.run import Run

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class MlflowRun(Run):
    def __init__(self, client: MlflowClient, info: RunInfo) -> None:
        self._client = client
        super().__init__(info)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for chunk in chunks(items, PARAMS_TAGS_PER_BATCH):
            call_mlflow(self._info.tracking_uri, self._client.log_batch, self.run_id, params=chunk)

    def _log_metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, stamp, step) for k, v, step, stamp in rows]
        for chunk in chunks(items, METRICS_PER_BATCH):
            call_mlflow(self._info.tracking_uri, self._client.log_batch, self.run_id, metrics=chunk)

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for chunk in chunks(items, PARAMS_TAGS_PER_BATCH):
            call_mlflow(self._info.tracking_uri, self._client.log_batch, self.run_id, tags=chunk)

    def _log_artifact(self, path: Path, name: str) -> None:
        upload_artifact(self._client, self._info.tracking_uri, self.run_id, path, name)

    def _end(self, status: str) -> None:
        end = now_ms()
        terminate_run(self._client, self._info.tracking_uri, self.run_id, status, end)
        self._info = dataclasses.replace(self._info, status=status, end_time=end)


def check_uri(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingError(f"tracking URI must be a non-empty string, got {uri!r}")
    uri = uri.strip().rstrip("/")
    if uri.startswith(("http://", "https://")):
        return uri
    if "://" in uri or uri.startswith(("databricks", "file:")):
        return uri
    raise TrackingError(
        f"tracking URI {uri!r} is not a URL; use an MLflow server such as http://host:5000"
    )


def mlflow_client(uri: str) -> MlflowClient:
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def probe_server(uri: str) -> None:
    # MLflow retries a dead server for minutes; one quick request gives a clear
    # answer instead. Any HTTP response, even an error, means something is there.
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking server {uri} is not reachable: {reason}") from None


def call_mlflow(uri: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        message = str(exc.message if hasattr(exc, "message") else exc).strip().splitlines()
        raise TrackingError(
            f"MLflow at {uri}: {message[0] if message else type(exc).__name__}"
        ) from None
    except OSError as exc:
        raise TrackingError(f"MLflow at {uri}: {exc}") from None


def mlflow_experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of the MLflow experiment ``name`` on ``uri``, created if missing."""
    from mlflow.exceptions import MlflowException

    found = call_mlflow(uri, client.get_experiment_by_name, name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {name!r} is deleted on {uri}; "
                "restore it there or use another name"
            )
        return str(found.experiment_id)
    try:
        return client.create_experiment(name)
    except MlflowException:
        # Created meanwhile by another process.
        again = call_mlflow(uri, client.get_experiment_by_name, name)
        if again is None:
            raise TrackingError(f"cannot create MLflow experiment {name!r} on {uri}") from None
        return str(again.experiment_id)


def upload_artifact(
    client: MlflowClient, uri: str | None, run_id: str, path: Path, name: str
) -> None:
    if path.is_dir():
        call_mlflow(uri, client.log_artifacts, run_id, str(path), name)
        return
    parent = posixpath.dirname(name) or None
    base = posixpath.basename(name)
    if path.name == base:
        call_mlflow(uri, client.log_artifact, run_id, str(path), parent)
        return
    # MLflow names the artifact after the file: copy it under the wanted name.
    with tempfile.TemporaryDirectory(prefix="edgeloop-artifact-") as tmp:
        staged = Path(tmp) / base
        shutil.copyfile(path, staged)
        call_mlflow(uri, client.log_artifact, run_id, str(staged), parent)


def terminate_run(
    client: MlflowClient, uri: str | None, run_id: str, status: str, end_time: int
) -> None:
    # The client prints "View run ... at ..." on stdout here; keep stdout clean
    # for `--json` output.
    with contextlib.redirect_stdout(sys.stderr):
        call_mlflow(uri, client.set_terminated, run_id, status, end_time)


def run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    if uri.startswith(("http://", "https://")):
        return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
