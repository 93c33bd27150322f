"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) tensors <-> edgeloop requests.

Pure functions, no I/O: ``oip_http.py`` serves them. A request body becomes the
same :class:`PredictRequest` an MQTT payload becomes (one row per batch entry, a
dict by feature name, or a list in model order), so the model's row validation,
the router and every error code are the MQTT path's. The wire format is in
docs/protocol.md, "HTTP: Open Inference Protocol v2".
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from edgeloop_agent.model import OnnxModel
from edgeloop_agent.protocol import (
    MAX_JSON_DEPTH,
    Code,
    PredictRequest,
    RequestError,
    decode_json_object,
)
from edgeloop_agent.wire.jsontext import json_name, json_text

# One input holding every feature as a [batch, n_features] matrix in model order.
MATRIX_INPUT: Final = "features"
# Output tensor names (docs/protocol.md).
LABEL: Final = "label"
PROBABILITIES: Final = "probabilities"
VALUE: Final = "value"

UNKNOWN_OUTPUT: Final = "unknown_output"
NOT_FOUND: Final = "not_found"
METHOD_NOT_ALLOWED: Final = "method_not_allowed"
LENGTH_REQUIRED: Final = "length_required"
TIMEOUT: Final = "timeout"
BUSY: Final = "busy"
ORIGIN_REFUSED: Final = "origin_refused"
BAD_REQUEST: Final = "bad_request"  # not HTTP the server can read (request line, headers)

_INTS: Final = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOATS: Final = frozenset({"FP16", "FP32", "FP64"})
DATATYPES: Final = _INTS | _FLOATS | {"BOOL", "BYTES"}
# What model metadata advertises per feature type (a BOOL tensor also fits an FP32 feature).
_FEATURE_DATATYPES: Final = {"float": "FP32", "bool": "BOOL", "string": "BYTES"}

# HTTP status of every error code; what is not listed is the client's fault (400).
_STATUS: Final = {
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.NO_MODEL: 503,
    Code.SHUTTING_DOWN: 503,
    BUSY: 503,
    "unknown_model": 404,
    "unknown_version": 404,
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    ORIGIN_REFUSED: 403,
    LENGTH_REQUIRED: 411,
    Code.INFERENCE_FAILED: 500,
    Code.INTERNAL_ERROR: 500,
    TIMEOUT: 504,
}


def http_status(code: str) -> int:
    return _STATUS.get(code, 400)


def error_body(code: str, message: str) -> bytes:
    """The protocol's error form; the edgeloop code leads the message (it is also
    sent as the ``X-Edgeloop-Error`` header), so it equals the MQTT reply's code."""
    return json.dumps({"error": f"{code}: {message}"}, separators=(",", ":")).encode()


@dataclass(slots=True)
class InferRequest:
    predict: PredictRequest
    outputs: list[str] | None  # output names asked for; None: all


_ids = itertools.count(1)
_ID_PREFIX = f"http-{os.getpid()}-"


def _new_id() -> str:
    # Unique within this agent's life: the feedback join and captured samples key on it.
    return f"{_ID_PREFIX}{next(_ids)}"


def parse_infer(
    body: bytes, *, max_bytes: int, max_rows: int, header_key: str | None = None
) -> InferRequest:
    """An OIP v2 infer request body -> rows for the serving loop, or RequestError.

    Size, encoding and depth are checked before parsing, as on MQTT. Each input is
    one feature by name, shape ``[B]`` or ``[B, 1]``; or one input named
    ``features`` of shape ``[B, N]`` holds all N features in model order.
    """
    data = decode_json_object(body, max_bytes)
    rid = data.get("id")
    if rid is None:
        rid = _new_id()
    elif not isinstance(rid, str) or not rid or len(rid) > 256:
        raise RequestError(
            Code.INVALID_ID,
            f'"id" must be a non-empty string of at most 256 characters, got {json_text(rid)}',
        )
    params = data.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise RequestError(Code.INVALID_FEATURES, '"parameters" must be an object', rid)
    key = (params or {}).get("key", header_key)
    if key is not None and (not isinstance(key, str) or len(key) > 1024):
        raise RequestError(
            Code.INVALID_KEY, f"routing key must be a string, got {json_text(key)}", rid
        )
    try:
        rows = _rows(data.get("inputs"), max_rows)
        outputs = _outputs(data.get("outputs"))
    except RequestError as exc:
        exc.request_id = rid
        raise
    return InferRequest(PredictRequest(rid, rows, True, key, None), outputs)


def _rows(inputs: Any, max_rows: int) -> list[Any]:
    if inputs is None:
        raise RequestError(Code.MISSING_FEATURES, 'request has no "inputs"')
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(Code.INVALID_FEATURES, '"inputs" must be a non-empty list of tensors')
    columns: dict[str, list[Any]] = {}
    batch: int | None = None
    matrix: list[Any] | None = None
    for n, tensor in enumerate(inputs):
        name, shape, values = _tensor(n, tensor)
        if name in columns:
            raise RequestError(Code.INVALID_FEATURES, f"input {json_name(name)} is given twice")
        if len(shape) == 2 and shape[1] != 1 and name == MATRIX_INPUT:
            if len(inputs) != 1:
                raise RequestError(
                    Code.INVALID_FEATURES,
                    f"input {json_name(MATRIX_INPUT)} of shape {shape} holds every feature; "
                    "it cannot be combined with other inputs",
                )
            width = shape[1]
            matrix = [values[i * width : (i + 1) * width] for i in range(shape[0])]
        elif len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
            columns[name] = values
        else:
            raise RequestError(
                Code.INVALID_FEATURES,
                f"input {json_name(name)} has shape {shape}: a feature takes [batch] or [batch, 1] "
                f"(or one input {json_name(MATRIX_INPUT)} of [batch, n_features] for all of them)",
            )
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise RequestError(
                Code.INVALID_FEATURES,
                f"input {json_name(name)} has a batch of {shape[0]}, the others {batch}",
            )
        if shape[0] < 1:
            raise RequestError(Code.INVALID_FEATURES, f"input {json_name(name)} has an empty batch")
        if shape[0] > max_rows:
            raise RequestError(
                Code.BATCH_TOO_LARGE,
                f"input {json_name(name)} has a batch of {shape[0]}, over the limit of {max_rows}",
            )
    if matrix is not None:
        return matrix
    names = list(columns)
    cols = [columns[k] for k in names]
    return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]


def _tensor(n: int, tensor: Any) -> tuple[str, list[int], list[Any]]:
    if not isinstance(tensor, dict):
        raise RequestError(Code.INVALID_FEATURES, f"inputs[{n}] must be an object")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(Code.INVALID_FEATURES, f'inputs[{n}] needs a non-empty string "name"')
    label = f"input {json_text(name)}"
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise RequestError(
            Code.INVALID_FEATURES,
            f'{label}: "shape" must be [batch] or [batch, n] of non-negative integers, '
            f"got {json_text(shape)}",
        )
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(
            Code.INVALID_FEATURES,
            f"{label}: unknown datatype {json_text(datatype)} "
            f"(one of {', '.join(sorted(DATATYPES))})",
        )
    if "data" not in tensor:
        raise RequestError(Code.MISSING_FEATURES, f'{label} has no "data"')
    values = _flatten(tensor["data"], label)
    want = math.prod(shape)
    if len(values) != want:
        raise RequestError(
            Code.INVALID_FEATURES,
            f'{label}: shape {shape} needs {want} values, "data" holds {len(values)}',
        )
    return name, shape, _typed(values, datatype, label)


def _flatten(data: Any, label: str) -> list[Any]:
    """Row-major elements of ``data`` (flat or nested lists, as the protocol allows)."""
    if not isinstance(data, list):
        raise RequestError(Code.INVALID_FEATURES, f'{label}: "data" must be a list')
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:  # no recursion: the depth is bounded by the JSON check anyway
        for v in stack[-1]:
            if isinstance(v, list):
                if len(stack) >= MAX_JSON_DEPTH:
                    raise RequestError(Code.TOO_DEEP, f'{label}: "data" nests too deeply')
                stack.append(iter(v))
                break
            if isinstance(v, dict):
                raise RequestError(Code.INVALID_FEATURES, f'{label}: "data" holds an object')
            out.append(v)
        else:
            stack.pop()
    return out


def _typed(values: list[Any], datatype: str, label: str) -> list[Any]:
    """Elements checked against the declared datatype; BOOL becomes 0.0/1.0. Ranges,
    NaN and infinities are left to the model's row check (the MQTT codes)."""
    if datatype == "BYTES":
        for v in values:
            if not isinstance(v, str) and v is not None:
                raise RequestError(
                    Code.NON_STRING, f"{label} is BYTES but holds {json_text(v)}; send strings"
                )
        return values
    if datatype == "BOOL":
        if not all(type(v) is bool for v in values):
            bad = next(v for v in values if type(v) is not bool)
            raise RequestError(Code.NON_NUMERIC, f"{label} is BOOL but holds {json_text(bad)}")
        return [1.0 if v else 0.0 for v in values]
    if datatype in _INTS:
        unsigned = datatype.startswith("U")
        for v in values:
            if type(v) is not int or (unsigned and v < 0):
                raise RequestError(
                    Code.NON_NUMERIC, f"{label} is {datatype} but holds {json_text(v)}"
                )
        return values
    for v in values:  # FP16/32/64: numbers; null and NaN go on to the model's check
        if isinstance(v, bool) or not (v is None or isinstance(v, (int, float))):
            raise RequestError(Code.NON_NUMERIC, f"{label} is {datatype} but holds {json_text(v)}")
    return values


def _outputs(outputs: Any) -> list[str] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError(
            Code.INVALID_FEATURES, '"outputs" must be a list of objects with a "name"'
        )
    return [o["name"] for o in outputs]


def output_names(model: OnnxModel) -> list[str]:
    return [LABEL, PROBABILITIES] if model.is_classifier else [VALUE]


def check_outputs(wanted: Sequence[str] | None, model: OnnxModel) -> None:
    if wanted is None:
        return
    known = output_names(model)
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise RequestError(
            UNKNOWN_OUTPUT,
            f"unknown outputs {', '.join(map(json_text, unknown))} (model {model.ref} has "
            f"{', '.join(known)})",
        )


# -- responses -----------------------------------------------------------------


def infer_response(reply: dict[str, Any], wanted: Sequence[str] | None) -> dict[str, Any]:
    """The serving loop's reply (docs/protocol.md, batch form) as an OIP response."""
    preds = reply["predictions"]
    batch = len(preds)
    outputs: list[dict[str, Any]] = []
    if preds and "probabilities" in preds[0]:
        labels = [p["prediction"] for p in preds]
        probs = [list(p["probabilities"].values()) for p in preds]
        width = len(probs[0]) if probs else 0
        outputs.append(
            {"name": LABEL, "datatype": _label_type(labels), "shape": [batch], "data": labels}
        )
        outputs.append(
            {
                "name": PROBABILITIES,
                "datatype": "FP32",
                "shape": [batch, width],
                "data": [v for row in probs for v in row],
            }
        )
    else:
        values = [p["prediction"] for p in preds]
        outputs.append({"name": VALUE, "datatype": "FP64", "shape": [batch], "data": values})
    if wanted is not None:
        outputs = [o for o in outputs if o["name"] in wanted]
    return {
        "model_name": reply["model"],
        "model_version": reply["version"],
        "id": reply["id"],
        "parameters": {"variant": reply["variant"], "ms": reply["ms"]},
        "outputs": outputs,
    }


def _label_type(labels: list[Any]) -> str:
    if all(type(v) is int for v in labels):
        return "INT64"
    if all(isinstance(v, str) for v in labels):
        return "BYTES"
    return "FP64"


def model_metadata(name: str, models: Sequence[OnnxModel]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: ``models`` are the served versions of ``name``,
    the first one describing the tensors."""
    model = models[0]
    inputs = [
        {"name": f.name, "datatype": _FEATURE_DATATYPES[f.dtype], "shape": [-1]}
        for f in model.meta.features
    ]
    if model.is_classifier:
        labels = model.classes
        ltype = _label_type(labels) if labels else "INT64"
        outputs = [
            {"name": LABEL, "datatype": ltype, "shape": [-1]},
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(model.classes)]},
        ]
    else:
        outputs = [{"name": VALUE, "datatype": "FP64", "shape": [-1]}]
    meta: dict[str, Any] = {
        "name": name,
        "versions": sorted({m.version for m in models}),
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"task": model.meta.task},
    }
    if model.is_classifier:
        meta["parameters"]["classes"] = list(model.classes)
    return meta
