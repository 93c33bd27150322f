"""Typed parsers for every message ``edgeloop serve`` consumes.

Anything on ``{prefix}/+/status|telemetry|samples|labels`` can be sent by any
client the broker lets publish there, so nothing in a payload is trusted: a
message is checked here, at the boundary (size, JSON, nesting depth, finite
numbers, string lengths, the types and ranges of each field the daemon reads,
the device named by the topic) before any of it reaches SQLite or the feature
store. A message that fails is *poison*: :class:`PoisonMessage` says why, and
the daemon counts it, records it and acknowledges it so it is never redelivered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from edgeloop_agent.wire.names import id_problem
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.errors import EdgeloopError

# Per topic leaf. A status document is a few hundred bytes, a report a few KiB
# per variant plus its drift windows; the limits leave a wide margin.
MAX_PAYLOAD: Final = {
    "status": 64 * 1024,
    "telemetry": 1024 * 1024,
    "samples": 256 * 1024,
    "labels": 64 * 1024,
}
MAX_DEPTH: Final = 16
MAX_STRING: Final = 4096
MAX_ITEMS: Final = 4096  # elements of any one list or object
MAX_FEATURES: Final = 512
MAX_NAME: Final = 256  # variant, feature, model, id strings
MAX_UNIX_S: Final = 1e10
MAX_INT: Final = 2**53  # exact in a float; far above any count an agent keeps

CapturedKind = Literal["samples", "labels"]
CAPTURED_KINDS: Final = ("samples", "labels")


class PoisonMessage(EdgeloopError, ValueError):
    """A message the daemon will never be able to use; ``reason`` says why."""


def topic_device(topic: str, prefix: str) -> tuple[str, str]:
    """``(device, leaf)`` of ``{prefix}/{device}/{leaf}``; poison if the device is invalid."""
    try:
        device, leaf = Topics.split(topic, prefix)
    except ValueError:
        raise PoisonMessage(f"topic {_short(topic)} is not {prefix}/<device>/<leaf>") from None
    problem = id_problem(device)
    if problem:
        raise PoisonMessage(f"device id {_short(device)} in the topic {problem}")
    return device, leaf


# -- outbox envelopes ----------------------------------------------------------------


def open_envelope(
    doc: Mapping[str, Any], *, kind_required: bool = True
) -> tuple[Mapping[str, Any] | None, Any]:
    """``(envelope, payload)`` of an agent outbox envelope, ``(None, doc)`` of a bare record.

    The agent's outbox wraps every message it sends as ``{"id", "device_id",
    "kind", "ts", "payload"}``. Samples and labels may also arrive bare (a record
    with no envelope), so for them an envelope is told apart by its ``payload``
    *and* ``kind``; telemetry always comes wrapped, but older senders leave out
    ``kind`` (``kind_required=False``). The payload is returned unchecked: each
    caller knows what it must be.
    """
    if "payload" in doc and ("kind" in doc or not kind_required):
        return doc, doc["payload"]
    return None, doc


# -- JSON ------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise PoisonMessage(f"non-finite number {name} (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise PoisonMessage(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 20:  # also keeps int() off multi-kilobyte digit strings
        raise PoisonMessage(f"integer {text[:40]}... is out of range")
    return int(text)


def load_json(payload: bytes | bytearray, leaf: str) -> Any:
    """Decode a payload under the limits for ``leaf``; poison on any violation."""
    limit = MAX_PAYLOAD[leaf]
    if len(payload) > limit:
        raise PoisonMessage(f"payload is {len(payload)} bytes; the limit for {leaf} is {limit}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonMessage(f"payload is not UTF-8: {exc}") from None
    try:
        doc = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise PoisonMessage("JSON is nested too deeply") from None
    except PoisonMessage:
        raise
    except ValueError as exc:
        raise PoisonMessage(f"payload is not JSON: {exc}") from None
    _check_tree(doc)
    return doc


def _check_tree(doc: Any) -> None:
    """Depth, container sizes, string lengths and encodable strings, without recursion."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, MAX_STRING)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise PoisonMessage(f"JSON is nested deeper than {MAX_DEPTH} levels")
            if len(value) > MAX_ITEMS:
                raise PoisonMessage(f"a JSON container has {len(value)} items; at most {MAX_ITEMS}")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_text(key, MAX_NAME)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)


def _check_text(value: str, limit: int) -> None:
    if len(value) > limit:
        raise PoisonMessage(f"a string is {len(value)} characters; at most {limit}")
    # JSON "\ud800" decodes to a lone surrogate, which SQLite, Parquet and
    # every later json.dumps(ensure_ascii=False) reject.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PoisonMessage("a string holds a lone surrogate (not valid Unicode)") from None


# -- field checks -------------------------------------------------------------------


def _obj(value: Any, what: str, *, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise PoisonMessage(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PoisonMessage(f"{what} must be a JSON list, got {_kind(value)}")
    return value


def _int(value: Any, what: str, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PoisonMessage(f"{what} must be an integer, got {_kind(value)}")
    if not 0 <= value <= MAX_INT:
        raise PoisonMessage(f"{what} must be within [0, 2**53], got {value}")
    return value


def _num(value: Any, what: str, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PoisonMessage(f"{what} must be a number, got {_kind(value)}")
    if not math.isfinite(float(value)):
        raise PoisonMessage(f"{what} must be finite")
    return float(value)


def _ts(value: Any, what: str, *, optional: bool = True) -> float | None:
    seconds = _num(value, what, optional=optional)
    if seconds is not None and not 0 <= seconds < MAX_UNIX_S:
        raise PoisonMessage(f"{what} must be unix seconds, got {seconds}")
    return seconds


def _str(value: Any, what: str, *, optional: bool = True, limit: int = MAX_NAME) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise PoisonMessage(f"{what} must be a non-empty string, got {_kind(value)}")
    if len(value) > limit:
        raise PoisonMessage(f"{what} is {len(value)} characters; at most {limit}")
    return value


def _bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PoisonMessage(f"{what} must be true or false, got {_kind(value)}")
    return value


def _check_device(device: object) -> str:
    problem = id_problem(device)
    if problem:
        raise PoisonMessage(f"device id {_short(device)} {problem}")
    assert isinstance(device, str)  # id_problem names a problem for every non-string
    return device


def _same_device(value: Any, device: str, what: str) -> None:
    if value is not None and value != device:
        raise PoisonMessage(f"{what} {_short(value)} is not the topic's device {device!r}")


# -- status -------------------------------------------------------------------------


def parse_status(device: str, doc: object) -> dict[str, Any]:
    """A status document (docs/protocol.md, Status), checked field by field."""
    _check_device(device)
    doc = _obj(doc, "status", optional=False)
    _same_device(doc.get("device"), device, "status.device")
    _bool(doc.get("online"), "status.online")
    _ts(doc.get("ts"), "status.ts")
    _ts(doc.get("started_at"), "status.started_at")
    _int(doc.get("revision"), "status.revision")
    _int(doc.get("desired_revision"), "status.desired_revision")
    for key in ("reason", "state", "agent_version"):
        _str(doc.get(key), f"status.{key}", limit=MAX_STRING)
    error = doc.get("error")
    if error is not None:
        error = _obj(error, "status.error", optional=False)
        _str(error.get("code"), "status.error.code", optional=False)
        _str(error.get("message"), "status.error.message", limit=MAX_STRING)
        _int(error.get("revision"), "status.error.revision")
        _ts(error.get("ts"), "status.error.ts")
    for i, model in enumerate(_list(doc.get("models"), "status.models")):
        where = f"status.models[{i}]"
        model = _obj(model, where, optional=False)
        for key in ("name", "version", "variant", "role", "sha256"):
            _str(model.get(key), f"{where}.{key}")
        _num(model.get("weight"), f"{where}.weight")
    return doc


# -- telemetry ------------------------------------------------------------------------


def parse_report(device: str | None, envelope: object) -> dict[str, Any]:
    """An outbox envelope carrying a telemetry report from ``device`` (the topic's;
    None: the one the report names, which must then be a valid device id)."""
    envelope = _obj(envelope, "telemetry message", optional=False)
    opened, report = open_envelope(envelope, kind_required=False)
    if opened is None or not isinstance(report, dict):
        raise PoisonMessage("telemetry message is not an outbox envelope (no payload object)")
    if device is None:
        device = report.get("device") or envelope.get("device_id")
    device = _check_device(device)
    _same_device(envelope.get("device_id"), device, "envelope.device_id")
    _same_device(report.get("device"), device, "report.device")
    envelope_id = _str(envelope.get("id"), "envelope.id")
    if not (envelope_id or _str(report.get("report_id"), "report_id")):
        raise PoisonMessage("telemetry report has no id")
    _ts(envelope.get("ts"), "envelope.ts")
    _ts(report.get("ts"), "report.ts")
    _int(report.get("revision"), "report.revision")
    _str(report.get("experiment"), "report.experiment")
    for name, meta in _obj(report.get("variants"), "report.variants").items():
        meta = _obj(meta, f"report.variants[{name!r}]", optional=False)
        for key in ("role", "version", "name"):
            _str(meta.get(key), f"report.variants[{name!r}].{key}")
    metrics = _obj(report.get("metrics"), "report.metrics")
    for name, m in _obj(metrics.get("variants"), "report.metrics.variants").items():
        where = f"report.metrics.variants[{name!r}]"
        m = _obj(m, where, optional=False)
        _int(m.get("requests"), f"{where}.requests")
        _int(m.get("predictions"), f"{where}.predictions")
        for code, n in _obj(m.get("errors"), f"{where}.errors").items():
            _int(n, f"{where}.errors[{code!r}]", optional=False)
        cls = _obj(m.get("classification"), f"{where}.classification")
        _int(cls.get("n"), f"{where}.classification.n")
        _int(cls.get("correct"), f"{where}.classification.correct")
        reg = _obj(m.get("regression"), f"{where}.regression")
        _int(reg.get("n"), f"{where}.regression.n")
        _num(reg.get("sum_abs_error"), f"{where}.regression.sum_abs_error")
        _num(reg.get("sum_sq_error"), f"{where}.regression.sum_sq_error")
        _obj(m.get("latency"), f"{where}.latency")
    for i, window in enumerate(_list(report.get("drift"), "report.drift")):
        where = f"report.drift[{i}]"
        window = _obj(window, where, optional=False)
        _str(window.get("variant"), f"{where}.variant", optional=False)
        _str(window.get("version"), f"{where}.version")
        _bool(window.get("enough_data"), f"{where}.enough_data")
        _bool(window.get("dataset_drift"), f"{where}.dataset_drift")
        _bool(_obj(window.get("output"), f"{where}.output").get("drift"), f"{where}.output.drift")
        for j, feature in enumerate(_list(window.get("features"), f"{where}.features")):
            feature = _obj(feature, f"{where}.features[{j}]", optional=False)
            _str(feature.get("name"), f"{where}.features[{j}].name", optional=False)
            _bool(feature.get("drift"), f"{where}.features[{j}].drift")
        bounds = _obj(window.get("window"), f"{where}.window")
        _str(bounds.get("kind"), f"{where}.window.kind")
        _ts(bounds.get("start"), f"{where}.window.start")
        _ts(bounds.get("end"), f"{where}.window.end")
        _int(bounds.get("n_rows"), f"{where}.window.n_rows")
        _ts(window.get("t_start"), f"{where}.t_start")
        _ts(window.get("t_end"), f"{where}.t_end")
        _estimated(window.get("estimated"), f"{where}.estimated")
    for name, c in _obj(report.get("concept_drift"), "report.concept_drift").items():
        where = f"report.concept_drift[{name!r}]"
        c = _obj(c, where, optional=False)
        _int(c.get("n"), f"{where}.n")
        _num(c.get("error_rate"), f"{where}.error_rate")
        _bool(c.get("drift"), f"{where}.drift")
        _int(c.get("detections"), f"{where}.detections")
    process = _obj(report.get("process"), "report.process")
    _num(process.get("rss_bytes"), "report.process.rss_bytes")
    _num(process.get("cpu_percent"), "report.process.cpu_percent")
    outbox = _obj(report.get("outbox"), "report.outbox")
    _int(outbox.get("depth"), "report.outbox.depth")
    # Items dropped since start: one count, or counts by kind (telemetry, samples,
    # labels, ...) since agents report a full disk's losses per kind.
    dropped = outbox.get("dropped")
    if isinstance(dropped, dict):
        if len(dropped) > 64:
            raise PoisonMessage("report.outbox.dropped has more than 64 kinds")
        for kind, n in dropped.items():
            _int(n, f"report.outbox.dropped[{kind!r}]", optional=False)
    else:
        _int(dropped, "report.outbox.dropped")
    return envelope


def _estimated(value: Any, where: str) -> None:
    """A window's label-free performance estimate (agent drift/performance.py), optional:
    metric name, the estimate and its training-time reference as fractions, rows."""
    est = _obj(value, where)
    if not est:
        return
    _str(est.get("metric"), f"{where}.metric", optional=False)
    _int(est.get("n"), f"{where}.n")
    _str(est.get("method"), f"{where}.method")
    auc = _obj(est.get("roc_auc"), f"{where}.roc_auc")
    for key, number in (
        ("value", est.get("value")),
        ("reference", est.get("reference")),
        ("roc_auc.value", auc.get("value")),
        ("roc_auc.reference", auc.get("reference")),
        ("roc_auc.tie_bound", auc.get("tie_bound")),
    ):
        x = _num(number, f"{where}.{key}")
        if x is not None and not 0.0 <= x <= 1.0:
            raise PoisonMessage(f"{where}.{key} must be within [0, 1], got {x}")


# -- captured samples and labels ----------------------------------------------------------


@dataclass(frozen=True)
class Captured:
    """One captured sample or label record, out of its envelope and checked."""

    kind: CapturedKind
    record: Mapping[str, Any]


def parse_captured(device: str, leaf: str, doc: object) -> Captured:
    """A sample or label record (or its outbox envelope), checked where the
    feature store cannot (device, sizes); the store checks the rest per record."""
    if leaf not in CAPTURED_KINDS:
        raise PoisonMessage(f"topic leaf {_short(leaf)} carries neither samples nor labels")
    kind: CapturedKind = "samples" if leaf == "samples" else "labels"
    doc = _obj(doc, f"{leaf} message", optional=False)
    envelope, record = open_envelope(doc)
    if envelope is not None:
        _same_device(envelope.get("device_id"), device, "envelope.device_id")
        record = _obj(record, f"{leaf} payload", optional=False)
    _same_device(record.get("device"), device, f"{leaf}.device")
    _str(record.get("sample_id"), f"{leaf}.sample_id", optional=False)
    if kind == "samples":
        model = record.get("model")
        problem = id_problem(model, reserved=False)
        if problem:
            raise PoisonMessage(f"samples.model {_short(model)} {problem}")
        features = _obj(record.get("features"), "samples.features", optional=False)
        if len(features) > MAX_FEATURES:
            raise PoisonMessage(f"samples has {len(features)} features; at most {MAX_FEATURES}")
        for name, value in features.items():
            if isinstance(value, (dict, list)):
                raise PoisonMessage(f"feature {_short(name)} must be a number, string or null")
    return Captured(kind, record)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", dict: "an object", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _short(value: Any) -> str:
    text = ascii(value) if isinstance(value, str) else _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."
