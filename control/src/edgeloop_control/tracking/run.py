"""The run handle ``Tracker.start_run`` yields: validates, then hands to a back end."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeloop_control.tracking.errors import TrackingError
from edgeloop_control.tracking.records import RunInfo
from edgeloop_control.tracking.rules import (
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    check_artifact_name,
    check_key,
    check_number,
    check_step,
    check_text,
    now_ms,
)


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
            key = check_key("param", key)
            text = check_text("param", key, value, MAX_PARAM_VALUE)
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
        key = check_key("metric", key)
        self._log_metrics(
            [(key, check_number(key, value), check_step(key, step), timestamp or now_ms())]
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = now_ms()
        self._log_metrics(
            [
                (check_key("metric", k), check_number(k, v), check_step(k, step), now)
                for k, v in metrics.items()
            ]
        )

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        checked = {}
        for key, value in tags.items():
            key = check_key("tag", key)
            checked[key] = check_text("tag", key, value, MAX_TAG_VALUE)
        self._set_tags(checked)

    def log_artifact(self, source: bytes | str | os.PathLike[str], name: str) -> None:
        """Store bytes, a file or a directory as artifact ``name`` (e.g. ``model.onnx``)."""
        name = check_artifact_name(name)
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
