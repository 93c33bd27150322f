"""Runs kept in the workspace (``tracking/runs/<run_id>/``) while no tracking server
is configured; the layout is in the package docstring."""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

from edgeloop_control.tracking.errors import TrackingError
from edgeloop_control.tracking.records import LOCAL_FORMAT, RunInfo
from edgeloop_control.tracking.rules import current_user, from_json_float, json_float, now_ms
from edgeloop_control.tracking.run import Run
from edgeloop_control.tracking.tags import TAG_RUN_NAME, TAG_USER


class LocalRun(Run):
    def __init__(self, store: LocalRunFiles, run_dir: Path, record: dict[str, Any]) -> None:
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
                row = {"key": key, "value": json_float(value), "step": step, "timestamp": stamp}
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
        self._record["end_time"] = now_ms()
        self._save()


class LocalRunFiles:
    """Runs kept in the workspace while no tracking server is configured: their files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def create(
        self, mlflow_experiment: str, run_name: str | None, tags: dict[str, str] | None = None
    ) -> LocalRun:
        run_id = uuid.uuid4().hex
        run_dir = self.runs_dir / run_id
        run_dir.mkdir(parents=True)
        all_tags = {TAG_USER: current_user()}
        if run_name:
            all_tags[TAG_RUN_NAME] = run_name
        all_tags.update(tags or {})
        record = {
            "format": LOCAL_FORMAT,
            "run_id": run_id,
            "experiment": mlflow_experiment,
            "run_name": run_name,
            "status": "RUNNING",
            "start_time": now_ms(),
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
                    (row["key"], from_json_float(row["value"]), int(row["step"]), row["timestamp"])
                )
            except (ValueError, KeyError, TypeError):
                if n == len(lines):
                    continue  # cut short by a crash mid-write; the rest is good
                raise TrackingError(f"{path} line {n} is not a metric record") from None
        return rows

    def info_of(self, record: dict[str, Any], run_dir: Path) -> RunInfo:
        return RunInfo(
            run_id=record["run_id"],
            mlflow_experiment=record["experiment"],
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

    def list_runs(self, mlflow_experiment: str | None = None) -> list[RunInfo]:
        """Workspace runs of one MLflow experiment (or all), most recent first."""
        infos = []
        for run_dir in self.run_dirs():
            record = self.read_record(run_dir)
            if mlflow_experiment is None or record["experiment"] == mlflow_experiment:
                infos.append(self.info_of(record, run_dir))
        return sorted(infos, key=lambda i: i.start_time, reverse=True)


def process_alive(record: dict[str, Any]) -> bool:
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
