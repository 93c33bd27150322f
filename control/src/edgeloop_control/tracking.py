"""Experiment tracking through MLflow's client API, with a workspace fallback.

With a tracking URI (``[tracking] uri`` in edgeloop.toml, else
``$MLFLOW_TRACKING_URI``) every run goes straight to that MLflow server through
``mlflow.tracking.MlflowClient`` (mlflow-skinny is enough). Without one, runs are
kept in the workspace under ``tracking/runs/<run_id>/`` (layout below) and
:func:`push_local_runs` replays them to a server later, once: the remote run id
is recorded, and the remote run carries the local id as tag
``edgeloop.local_run_id`` so even a push interrupted half-way is never doubled.

Local layout (format 1)::

    tracking/runs/<run_id>/run.json       id, experiment, name, status, times,
                                          params, tags, pushed {uri: remote run}
    tracking/runs/<run_id>/metrics.jsonl  one {"key","value","step","timestamp"} a line
    tracking/runs/<run_id>/artifacts/...  logged files, by artifact name

Keys and values are validated with MLflow's own rules when they are logged, so
a local run that was accepted is also accepted by the server when replayed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import math
import os
import posixpath
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from edgeloop_control.infra.workspace import Workspace

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

LOCAL_FORMAT = 1
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")

# MLflow's limits (mlflow.utils.validation); the conservative ends of the
# versions edgeloop supports, so what passes here passes on any of them.
_KEY_RE = re.compile(r"^[/\w.\- ]+$")
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 5000
_PARAMS_TAGS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


class TrackingError(Exception):
    """A run cannot be logged, read or pushed; the message says why."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment: str
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
            "experiment": self.experiment,
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
    local_run_id: str
    experiment: str
    # pushed | already-pushed | skipped
    status: str
    remote_run_id: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_run_id": self.local_run_id,
            "experiment": self.experiment,
            "status": self.status,
            "remote_run_id": self.remote_run_id,
            "reason": self.reason,
        }


# -- validation (MLflow's rules) -----------------------------------------------


def _key(kind: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TrackingError(f"{kind} name must be a non-empty string, got {key!r}")
    if len(key) > _MAX_KEY:
        raise TrackingError(f"{kind} name {key[:40]!r}... is longer than {_MAX_KEY} characters")
    if not _KEY_RE.match(key):
        raise TrackingError(
            f"{kind} name {key!r} may only contain letters, digits, '_', '-', '.', ' ' and '/'"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        raise TrackingError(f"{kind} name {key!r} must be a clean relative path (MLflow rule)")
    return key


def _text(kind: str, key: str, value: object, limit: int) -> str:
    # str() like MLflow's own log_param; JSON for containers so they stay readable.
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str, sort_keys=True)
    else:
        text = str(value)
    if len(text) > limit:
        raise TrackingError(
            f"{kind} {key!r} value is {len(text)} characters; MLflow allows {limit}"
        )
    return text


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # numpy scalars are not int/float subclasses, but convert cleanly.
        item = getattr(value, "item", None)
        value = item() if callable(item) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrackingError(f"metric {key!r} must be a number, got {value!r}")
    return float(value)


def _step(key: str, step: object) -> int:
    if step is None:
        return 0
    if isinstance(step, bool) or not isinstance(step, int):
        raise TrackingError(f"metric {key!r} step must be an integer, got {step!r}")
    return step


def _artifact_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise TrackingError(f"artifact name must be a non-empty string, got {name!r}")
    norm = posixpath.normpath(name)
    if norm != name.rstrip("/") or norm.startswith(("/", "..")) or norm == ".":
        raise TrackingError(
            f"artifact name {name!r} must be a relative path without '..' (e.g. model.onnx)"
        )
    return norm


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_float(value: float) -> float | str:
    # JSON has no NaN/Infinity; MLflow accepts them as metric values, so keep them as text.
    return value if math.isfinite(value) else repr(value)


def _from_json_float(value: float | str) -> float:
    return float(value)


# -- runs ------------------------------------------------------------------------


class Run:
    """The handle ``Tracker.start_run`` yields. Same methods for both back ends."""

    def __init__(self, info: RunInfo) -> None:
        self._info = info
        self._params: dict[str, str] = {}

    @property
    def info(self) -> RunInfo:
        return self._info

    @property
    def run_id(self) -> str:
        return self._info.run_id

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        checked = {}
        for key, value in params.items():
            key = _key("param", key)
            text = _text("param", key, value, _MAX_PARAM_VALUE)
            # MLflow refuses to change a logged param; fail here, not at replay.
            if key in self._params and self._params[key] != text:
                raise TrackingError(
                    f"param {key!r} was already logged as {self._params[key]!r}; "
                    f"cannot change it to {text!r}"
                )
            checked[key] = text
        self._log_params(checked)
        self._params.update(checked)

    def log_metric(
        self, key: str, value: float, step: int | None = None, timestamp: int | None = None
    ) -> None:
        key = _key("metric", key)
        self._log_metrics([(key, _number(key, value), _step(key, step), timestamp or _now_ms())])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = _now_ms()
        self._log_metrics(
            [(_key("metric", k), _number(k, v), _step(k, step), now) for k, v in metrics.items()]
        )

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        checked = {}
        for key, value in tags.items():
            key = _key("tag", key)
            checked[key] = _text("tag", key, value, _MAX_TAG_VALUE)
        self._set_tags(checked)

    def log_artifact(self, source: bytes | str | os.PathLike[str], name: str) -> None:
        """Store bytes, a file or a directory as artifact ``name`` (e.g. ``model.onnx``)."""
        name = _artifact_name(name)
        if isinstance(source, (bytes, bytearray, memoryview)):
            with tempfile.TemporaryDirectory(prefix="edgeloop-artifact-") as tmp:
                path = Path(tmp) / posixpath.basename(name)
                path.write_bytes(bytes(source))
                self._log_artifact(path, name)
            return
        path = Path(source)
        if not path.exists():
            raise TrackingError(f"artifact source {path} does not exist")
        self._log_artifact(path, name)

    def log_dict(self, data: Any, name: str) -> None:
        """Store a JSON document (e.g. the reference drift profile) as artifact ``name``."""
        try:
            text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TrackingError(f"artifact {name!r} is not JSON-serialisable: {exc}") from None
        self.log_artifact(text.encode(), name)

    # back-end hooks
    def _log_params(self, params: dict[str, str]) -> None:
        raise NotImplementedError

    def _log_metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        raise NotImplementedError

    def _set_tags(self, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def _log_artifact(self, path: Path, name: str) -> None:
        raise NotImplementedError

    def _end(self, status: str) -> None:
        raise NotImplementedError


class LocalRun(Run):
    def __init__(self, store: LocalRunStore, run_dir: Path, record: dict[str, Any]) -> None:
        self._store = store
        self._dir = run_dir
        self._record = record
        super().__init__(store.info_of(record, run_dir))

    def _save(self) -> None:
        self._store.write_record(self._dir, self._record)
        self._info = self._store.info_of(self._record, self._dir)

    def _log_params(self, params: dict[str, str]) -> None:
        self._record["params"].update(params)
        self._save()

    def _log_metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        with open(self._dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            for key, value, step, stamp in rows:
                row = {"key": key, "value": _json_float(value), "step": step, "timestamp": stamp}
                fh.write(json.dumps(row, allow_nan=False) + "\n")

    def _set_tags(self, tags: dict[str, str]) -> None:
        self._record["tags"].update(tags)
        self._save()

    def _log_artifact(self, path: Path, name: str) -> None:
        dest = self._dir / "artifacts" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True)
        else:
            shutil.copyfile(path, dest)

    def _end(self, status: str) -> None:
        self._record["status"] = status
        self._record["end_time"] = _now_ms()
        self._save()


class MlflowRun(Run):
    def __init__(self, client: MlflowClient, info: RunInfo) -> None:
        self._client = client
        super().__init__(info)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for chunk in _chunks(items, _PARAMS_TAGS_PER_BATCH):
            _call(self._info.tracking_uri, self._client.log_batch, self.run_id, params=chunk)

    def _log_metrics(self, rows: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, v, stamp, step) for k, v, step, stamp in rows]
        for chunk in _chunks(items, _METRICS_PER_BATCH):
            _call(self._info.tracking_uri, self._client.log_batch, self.run_id, metrics=chunk)

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for chunk in _chunks(items, _PARAMS_TAGS_PER_BATCH):
            _call(self._info.tracking_uri, self._client.log_batch, self.run_id, tags=chunk)

    def _log_artifact(self, path: Path, name: str) -> None:
        _upload_artifact(self._client, self._info.tracking_uri, self.run_id, path, name)

    def _end(self, status: str) -> None:
        end = _now_ms()
        _terminate(self._client, self._info.tracking_uri, self.run_id, status, end)
        self._info = dataclasses.replace(self._info, status=status, end_time=end)


# -- the workspace store -----------------------------------------------------------


class LocalRunStore:
    """Runs kept in the workspace while no tracking server is configured."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def create(
        self, experiment: str, run_name: str | None, tags: dict[str, str] | None = None
    ) -> LocalRun:
        run_id = uuid.uuid4().hex
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True)
        all_tags = {TAG_USER: _user()}
        if run_name:
            all_tags[TAG_RUN_NAME] = run_name
        all_tags.update(tags or {})
        record = {
            "format": LOCAL_FORMAT,
            "run_id": run_id,
            "experiment": experiment,
            "run_name": run_name,
            "status": "RUNNING",
            "start_time": _now_ms(),
            "end_time": None,
            # Lets `runs push` tell a live run from one whose process died.
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "params": {},
            "tags": all_tags,
            "pushed": {},
        }
        self.write_record(run_dir, record)
        return LocalRun(self, run_dir, record)

    def write_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        tmp = run_dir / "run.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, run_dir / "run.json")

    def read_record(self, run_dir: Path) -> dict[str, Any]:
        path = run_dir / "run.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrackingError(f"cannot read local run {path}: {exc}") from None
        if not isinstance(record, dict) or record.get("format") != LOCAL_FORMAT:
            raise TrackingError(f"{path} is not an edgeloop run record (format {LOCAL_FORMAT})")
        return record

    def read_metrics(self, run_dir: Path) -> list[tuple[str, float, int, int]]:
        path = run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append(
                    (row["key"], _from_json_float(row["value"]), int(row["step"]), row["timestamp"])
                )
            except (ValueError, KeyError, TypeError):
                if n == len(lines):
                    continue  # cut short by a crash mid-write; the rest is good
                raise TrackingError(f"{path} line {n} is not a metric record") from None
        return rows

    def info_of(self, record: dict[str, Any], run_dir: Path) -> RunInfo:
        return RunInfo(
            run_id=record["run_id"],
            experiment=record["experiment"],
            run_name=record.get("run_name"),
            status=record["status"],
            start_time=record["start_time"],
            end_time=record.get("end_time"),
            tracking_uri=None,
            uri=run_dir.resolve().as_uri(),
            pushed={uri: p["run_id"] for uri, p in record.get("pushed", {}).items()},
        )

    def run_dirs(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p for p in self.runs_dir.iterdir() if (p / "run.json").is_file())

    def list_runs(self, experiment: str | None = None) -> list[RunInfo]:
        infos = []
        for run_dir in self.run_dirs():
            record = self.read_record(run_dir)
            if experiment is None or record["experiment"] == experiment:
                infos.append(self.info_of(record, run_dir))
        return sorted(infos, key=lambda i: i.start_time, reverse=True)

    def push(self, to_uri: str, *, experiment: str | None = None) -> list[PushResult]:
        """Replay finished runs to the MLflow server at ``to_uri``; idempotent."""
        to_uri = _check_uri(to_uri)
        results = []
        client: MlflowClient | None = None
        for run_dir in sorted(self.run_dirs(), key=lambda d: self.read_record(d)["start_time"]):
            record = self.read_record(run_dir)
            if experiment is not None and record["experiment"] != experiment:
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
                if _alive(record):
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
                record["end_time"] = record.get("end_time") or _now_ms()
                self.write_record(run_dir, record)
            if client is None:
                client = _client(to_uri)
            remote_id, experiment_id, fresh = self._replay(client, to_uri, run_dir, record)
            record.setdefault("pushed", {})[to_uri] = {
                "run_id": remote_id,
                "experiment_id": experiment_id,
                "pushed_at": _now_ms(),
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

        experiment_id = _experiment_id(client, uri, record["experiment"])
        local_id = record["run_id"]
        # A push interrupted after creating the remote run left a RUNNING run
        # tagged with our id: a finished one means the push had completed.
        existing = _call(
            uri,
            client.search_runs,
            [experiment_id],
            filter_string=f"tags.`{TAG_LOCAL_RUN_ID}` = '{local_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
        )
        for run in existing:
            if run.info.status != "RUNNING":
                return run.info.run_id, experiment_id, False
            _call(uri, client.delete_run, run.info.run_id)

        tags = {**record.get("tags", {}), TAG_LOCAL_RUN_ID: local_id}
        created = _call(
            uri,
            client.create_run,
            experiment_id,
            start_time=record["start_time"],
            tags=tags,
            run_name=record.get("run_name"),
        )
        run_id = created.info.run_id
        params = [Param(k, v) for k, v in record.get("params", {}).items()]
        for chunk in _chunks(params, _PARAMS_TAGS_PER_BATCH):
            _call(uri, client.log_batch, run_id, params=chunk)
        metrics = [Metric(k, v, stamp, step) for k, v, step, stamp in self.read_metrics(run_dir)]
        for chunk in _chunks(metrics, _METRICS_PER_BATCH):
            _call(uri, client.log_batch, run_id, metrics=chunk)
        artifacts = run_dir / "artifacts"
        if artifacts.is_dir() and any(artifacts.iterdir()):
            _call(uri, client.log_artifacts, run_id, str(artifacts))
        # Last: a terminated remote run is the marker of a complete push.
        _terminate(client, uri, run_id, record["status"], record.get("end_time") or _now_ms())
        return run_id, experiment_id, True


# -- the tracker ---------------------------------------------------------------------


class Tracker:
    """Logs runs to an MLflow tracking server, or to the workspace when ``uri`` is None."""

    def __init__(self, uri: str | None, local_dir: str | os.PathLike[str]) -> None:
        self.uri = _check_uri(uri) if uri else None
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
            self._client = _client(self.uri)
        return self._client

    @contextlib.contextmanager
    def start_run(
        self,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Iterator[Run]:
        """A run that ends FINISHED, or FAILED (KILLED on Ctrl-C) if the block raises."""
        if not isinstance(experiment, str) or not experiment.strip():
            raise TrackingError(f"experiment name must be a non-empty string, got {experiment!r}")
        if run_name is not None and not isinstance(run_name, str):
            raise TrackingError(f"run_name must be a string, got {run_name!r}")
        checked = {
            _key("tag", k): _text("tag", k, v, _MAX_TAG_VALUE) for k, v in (tags or {}).items()
        }
        run = self._create(experiment, run_name, checked)
        try:
            yield run
        except Exception:
            run._end("FAILED")
            raise
        except BaseException:
            run._end("KILLED")
            raise
        run._end("FINISHED")

    def _create(self, experiment: str, run_name: str | None, tags: dict[str, str]) -> Run:
        if self.uri is None:
            return self.local.create(experiment, run_name, tags)
        client = self.client
        experiment_id = _experiment_id(client, self.uri, experiment)
        created = _call(
            self.uri,
            client.create_run,
            experiment_id,
            tags={TAG_USER: _user(), **tags},
            run_name=run_name,
        )
        run_id = created.info.run_id
        info = RunInfo(
            run_id=run_id,
            experiment=experiment,
            run_name=created.info.run_name,
            status=created.info.status,
            start_time=created.info.start_time,
            end_time=None,
            tracking_uri=self.uri,
            uri=f"runs:/{run_id}",
            url=_run_url(self.uri, experiment_id, run_id),
        )
        return MlflowRun(client, info)

    def list_runs(self, experiment: str | None = None, *, max_results: int = 100) -> list[RunInfo]:
        """Most recent first: from the server, or from the workspace in local mode."""
        if self.uri is None:
            return self.local.list_runs(experiment)[:max_results]
        client = self.client
        if experiment is not None:
            found = _call(self.uri, client.get_experiment_by_name, experiment)
            experiments = [found] if found is not None else []
        else:
            experiments = list(_call(self.uri, client.search_experiments))
        if not experiments:
            return []
        names = {e.experiment_id: e.name for e in experiments}
        runs = _call(
            self.uri,
            client.search_runs,
            list(names),
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
        return [
            RunInfo(
                run_id=r.info.run_id,
                experiment=names.get(r.info.experiment_id, r.info.experiment_id),
                run_name=r.info.run_name,
                status=r.info.status,
                start_time=r.info.start_time,
                end_time=r.info.end_time,
                tracking_uri=self.uri,
                uri=f"runs:/{r.info.run_id}",
                url=_run_url(self.uri, r.info.experiment_id, r.info.run_id),
            )
            for r in runs
        ]


def push_local_runs(
    ws: Workspace, to_uri: str, *, experiment: str | None = None
) -> list[PushResult]:
    """Replay the workspace's local runs to ``to_uri`` (each run at most once)."""
    return LocalRunStore(ws.local_runs_dir).push(to_uri, experiment=experiment)


# -- MLflow plumbing -----------------------------------------------------------------


def _check_uri(uri: str) -> str:
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


def _client(uri: str) -> MlflowClient:
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _probe(uri: str) -> None:
    # MLflow retries a dead server for minutes; one quick request gives a clear
    # answer instead. Any HTTP response, even an error, means something is there.
    try:
        urllib.request.urlopen(f"{uri}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking server {uri} is not reachable: {reason}") from None


def _call(uri: str | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
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


def _experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = _call(uri, client.get_experiment_by_name, name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment {name!r} is deleted on {uri}; restore it there or use another name"
            )
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        # Created meanwhile by another process.
        again = _call(uri, client.get_experiment_by_name, name)
        if again is None:
            raise TrackingError(f"cannot create experiment {name!r} on {uri}") from None
        return again.experiment_id


def _upload_artifact(
    client: MlflowClient, uri: str | None, run_id: str, path: Path, name: str
) -> None:
    if path.is_dir():
        _call(uri, client.log_artifacts, run_id, str(path), name)
        return
    parent = posixpath.dirname(name) or None
    base = posixpath.basename(name)
    if path.name == base:
        _call(uri, client.log_artifact, run_id, str(path), parent)
        return
    # MLflow names the artifact after the file: copy it under the wanted name.
    with tempfile.TemporaryDirectory(prefix="edgeloop-artifact-") as tmp:
        staged = Path(tmp) / base
        shutil.copyfile(path, staged)
        _call(uri, client.log_artifact, run_id, str(staged), parent)


def _terminate(
    client: MlflowClient, uri: str | None, run_id: str, status: str, end_time: int
) -> None:
    # The client prints "View run ... at ..." on stdout here; keep stdout clean
    # for `--json` output.
    with contextlib.redirect_stdout(sys.stderr):
        _call(uri, client.set_terminated, run_id, status, end_time)


def _run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    if uri.startswith(("http://", "https://")):
        return f"{uri}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _alive(record: dict[str, Any]) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # cannot tell for another machine's process; assume it lives
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
