"""MLflow's rules for keys, values and artifact names, checked when a value is logged.

A run accepted here, kept in the workspace, is then also accepted by a
server when it is replayed."""

from __future__ import annotations

import getpass
import json
import math
import posixpath
import re
import time

from edgeloop_control.tracking.errors import TrackingError

# MLflow's limits (mlflow.utils.validation); the conservative ends of the
# versions edgeloop supports, so what passes here passes on any of them.
KEY_RE = re.compile(r"^[/\w.\- ]+$")
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000
PARAMS_TAGS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


def check_key(kind: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TrackingError(f"{kind} name must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY:
        raise TrackingError(f"{kind} name {key[:40]!r}... is longer than {MAX_KEY} characters")
    if not KEY_RE.match(key):
        raise TrackingError(
            f"{kind} name {key!r} may only contain letters, digits, '_', '-', '.', ' ' and '/'"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        raise TrackingError(f"{kind} name {key!r} must be a clean relative path (MLflow rule)")
    return key


def check_text(kind: str, key: str, value: object, limit: int) -> str:
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


def check_number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # numpy scalars are not int/float subclasses, but convert cleanly.
        item = getattr(value, "item", None)
        value = item() if callable(item) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrackingError(f"metric {key!r} must be a number, got {value!r}")
    return float(value)


def check_step(key: str, step: object) -> int:
    if step is None:
        return 0
    if isinstance(step, bool) or not isinstance(step, int):
        raise TrackingError(f"metric {key!r} step must be an integer, got {step!r}")
    return step


def check_artifact_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise TrackingError(f"artifact name must be a non-empty string, got {name!r}")
    norm = posixpath.normpath(name)
    if norm != name.rstrip("/") or norm.startswith(("/", "..")) or norm == ".":
        raise TrackingError(
            f"artifact name {name!r} must be a relative path without '..' (e.g. model.onnx)"
        )
    return norm


def now_ms() -> int:
    return int(time.time() * 1000)


def json_float(value: float) -> float | str:
    # JSON has no NaN/Infinity; MLflow accepts them as metric values, so keep them as text.
    return value if math.isfinite(value) else repr(value)


def from_json_float(value: float | str) -> float:
    return float(value)


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
