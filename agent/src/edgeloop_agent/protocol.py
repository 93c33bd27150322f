"""Request and reply payloads of the agent's serving path, and their error codes.

What applications send to ``{prefix}/{device}/predict|feedback`` and get back;
the code twin of that part of ``docs/protocol.md``. The topics themselves, and
everything the control node shares, are in :mod:`edgeloop_agent.wire`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from edgeloop_agent.wire.jsontext import json_kind, json_text

# The two request limits agree: 1,024 rows of up to 512 bytes each fit in the default
# payload. Measured (bench/bench_payload_rows.py): an object-form row of the demo's 8
# sensors is 178 bytes (277 with full-precision floats), a 20-feature row 570; the
# old 64 KiB cut object-form batches off at 114-368 rows while 1,024 were promised.
# Parsing a 512 KiB object-form payload peaks at ~5 MB of Python objects, transient.
DEFAULT_MAX_PAYLOAD: Final = 512 * 1024
DEFAULT_MAX_ROWS: Final = 1024
# The most compact rows measured (the list form of a few small numbers: 32 bytes with
# the separator). max_batch_rows rows of that size must fit in max_payload_bytes, or
# the batch limit can never be reached and only misleads (config validation refuses).
MIN_ROW_BYTES: Final = 32
# '{"id":"<a few chars>","rows":[]}' and room for a key and a reply_to.
REQUEST_OVERHEAD_BYTES: Final = 64
# No request needs more than 3 levels ({"rows": [{...}]}); 32 leaves room, and
# stays far below what makes the json module recurse out of the stack (~1,000).
MAX_JSON_DEPTH: Final = 32


# -- error codes --------------------------------------------------------------


class Code:
    """Machine-readable error codes sent in ``{"error": {"code": ...}}``."""

    INVALID_JSON = "invalid_json"
    INVALID_ENCODING = "invalid_encoding"
    TOO_DEEP = "too_deep"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_ID = "missing_id"
    INVALID_ID = "invalid_id"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    MISSING_FEATURES = "missing_features"
    INVALID_FEATURES = "invalid_features"
    MISSING_FEATURE = "missing_feature"
    UNKNOWN_FEATURE = "unknown_feature"
    WRONG_FEATURE_COUNT = "wrong_feature_count"
    NON_NUMERIC = "non_numeric"
    NON_BOOLEAN = "non_boolean"
    NON_STRING = "non_string"
    NON_FINITE = "non_finite"
    BATCH_TOO_LARGE = "batch_too_large"
    INVALID_KEY = "invalid_key"
    INVALID_REPLY_TO = "invalid_reply_to"
    REPLY_TO_REFUSED = "reply_to_refused"
    NO_MODEL = "no_model"
    INFERENCE_FAILED = "inference_failed"
    INVALID_LABEL = "invalid_label"
    UNKNOWN_REQUEST = "unknown_request"
    DUPLICATE_FEEDBACK = "duplicate_feedback"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"


class RequestError(Exception):
    """A request the agent refuses; becomes an error reply, never a crash."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        # Where the error reply goes for an MQTT 3.1.1 client; set by the parsers.
        self.reply_to: str | None = None


def min_payload_for(max_rows: int) -> int:
    """The smallest ``max_payload_bytes`` that can carry ``max_rows`` compact rows."""
    return max_rows * MIN_ROW_BYTES + REQUEST_OVERHEAD_BYTES


def error_reply(request_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


# -- requests -----------------------------------------------------------------


@dataclass(slots=True)
class PredictRequest:
    """A syntactically valid predict request; features are checked per model."""

    id: str
    rows: list[Any]  # each a dict name -> value, or a list in model input order
    batch: bool  # True when the request used "rows" (the reply uses "predictions")
    key: str | None
    reply_to: str | None


_BOMS: Final = (
    (b"\x00\x00\xfe\xff", "a UTF-32 byte-order mark"),
    (b"\xff\xfe\x00\x00", "a UTF-32 byte-order mark"),
    (b"\xef\xbb\xbf", "a UTF-8 byte-order mark"),
    (b"\xfe\xff", "a UTF-16 byte-order mark"),
    (b"\xff\xfe", "a UTF-16 byte-order mark"),
)
_ESCAPE: Final = re.compile(rb"\\.", re.DOTALL)
_STRING: Final = re.compile(rb'"[^"]*"')
_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = np.zeros(256, dtype=np.int32)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


def json_depth(payload: bytes) -> int:
    """The deepest nesting of arrays/objects in ``payload``, without parsing it.

    Escape pairs go first, so every quote left delimits a string (linear, whatever
    the input: a string regex that handled escapes itself could rescan the rest of
    the payload from every escaped quote); then strings go, then everything but
    brackets. For text that is not JSON the count can be off after the first
    syntax error, which is where the parser stops anyway.
    """
    text = _STRING.sub(b"", _ESCAPE.sub(b"", payload)).translate(None, _NOT_BRACKET)
    if not text:
        return 0
    return int(np.cumsum(_STEP[np.frombuffer(text, dtype=np.uint8)]).max())


def decode_json_object(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse one payload into a dict, or raise RequestError naming the problem.

    Size, encoding and nesting depth are checked before the parser runs: the
    contract is UTF-8 (``json.loads`` on bytes would also guess UTF-16/32 and
    accept encoded surrogates), and ~1,000 nested brackets make it raise
    RecursionError.
    """
    if len(payload) > max_bytes:
        raise RequestError(
            Code.PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes, over the {max_bytes}-byte limit",
        )
    if payload[:1] in (b"\xef", b"\xfe", b"\xff", b"\x00"):
        for bom, what in _BOMS:
            if payload.startswith(bom):
                raise RequestError(
                    Code.INVALID_ENCODING, f"payload starts with {what}; send UTF-8 without one"
                )
    if b"\x00" in payload:
        # Never in JSON text (even inside strings it must be escaped); UTF-16/32 is full of it.
        raise RequestError(
            Code.INVALID_ENCODING,
            "payload contains NUL bytes: it must be UTF-8 JSON (UTF-16/32 are refused)",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            Code.INVALID_ENCODING,
            f"payload is not valid UTF-8 at byte {exc.start}: {exc.reason}",
        ) from None
    # Counting is cheap (C); the scan runs only when there are enough brackets.
    if payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH:
        depth = json_depth(payload)
        if depth > MAX_JSON_DEPTH:
            raise RequestError(
                Code.TOO_DEEP,
                f"payload nests {depth} levels of arrays/objects; the limit is {MAX_JSON_DEPTH}",
            )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RequestError(Code.INVALID_JSON, f"payload is not valid JSON: {exc}") from None
    except RecursionError:  # the depth check should make this unreachable
        raise RequestError(Code.TOO_DEEP, "payload nests too deeply to parse") from None
    if not isinstance(data, dict):
        raise RequestError(
            Code.NOT_AN_OBJECT, f"payload must be a JSON object, got {json_kind(data)}"
        )
    return data


def _request_id(data: dict[str, Any]) -> str:
    if "id" not in data or data["id"] is None:
        raise RequestError(Code.MISSING_ID, 'request has no "id" field')
    rid = data["id"]
    if not isinstance(rid, str) or not rid or len(rid) > 256:
        raise RequestError(
            Code.INVALID_ID,
            f'"id" must be a non-empty string of at most 256 characters, got {json_text(rid)}',
        )
    return rid


def _reply_to(data: dict[str, Any], rid: str | None) -> str | None:
    """The payload's ``reply_to`` as given. Whether it may be used (MQTT 5 topic
    rules and the device's reply policy) is the server's decision: see
    ``replypolicy.py``."""
    reply_to = data.get("reply_to")
    if reply_to is None:
        return None
    if not isinstance(reply_to, str) or not reply_to:
        raise RequestError(
            Code.INVALID_REPLY_TO,
            f'"reply_to" must be a non-empty topic name, got {json_text(reply_to)}',
            rid,
        )
    return reply_to


def _addressed(data: dict[str, Any], parse: Any) -> Any:
    """Run ``parse(data)``; any RequestError it raises carries the payload's reply_to.

    reply_to is read before everything else, so even a missing-id error reaches a
    3.1.1 client at its own reply topic (an invalid reply_to cannot be used, though).
    """
    try:
        reply_to = _reply_to(data, None)
    except RequestError:
        reply_to = None
    try:
        return parse(data)
    except RequestError as exc:
        exc.reply_to = reply_to
        raise


def parse_predict(payload: bytes, *, max_bytes: int, max_rows: int) -> PredictRequest:
    data = decode_json_object(payload, max_bytes)
    return _addressed(data, lambda d: _predict(d, max_rows))


def _predict(data: dict[str, Any], max_rows: int) -> PredictRequest:
    rid = _request_id(data)
    reply_to = _reply_to(data, rid)
    key = data.get("key")
    if key is not None and (not isinstance(key, str) or len(key) > 1024):
        raise RequestError(Code.INVALID_KEY, f'"key" must be a string, got {json_text(key)}', rid)
    if "rows" in data:
        rows = data["rows"]
        if not isinstance(rows, list) or not rows:
            raise RequestError(
                Code.INVALID_FEATURES, '"rows" must be a non-empty list of feature sets', rid
            )
        if len(rows) > max_rows:
            raise RequestError(
                Code.BATCH_TOO_LARGE,
                f'"rows" has {len(rows)} entries, over the limit of {max_rows}',
                rid,
            )
        return PredictRequest(rid, rows, True, key, reply_to)
    if "features" not in data:
        raise RequestError(Code.MISSING_FEATURES, 'request has neither "features" nor "rows"', rid)
    return PredictRequest(rid, [data["features"]], False, key, reply_to)


@dataclass(slots=True)
class Feedback:
    id: str
    label: Any
    reply_to: str | None


def parse_feedback(payload: bytes, *, max_bytes: int) -> Feedback:
    return _addressed(decode_json_object(payload, max_bytes), _feedback)


def _feedback(data: dict[str, Any]) -> Feedback:
    rid = _request_id(data)
    reply_to = _reply_to(data, rid)
    if "label" not in data:
        raise RequestError(Code.INVALID_LABEL, 'feedback has no "label" field', rid)
    label = data["label"]
    if isinstance(label, bool) or not isinstance(label, (int, float, str)):
        raise RequestError(
            Code.INVALID_LABEL, f'"label" must be a number or a string, got {json_text(label)}', rid
        )
    if isinstance(label, float) and not math.isfinite(label):
        raise RequestError(
            Code.INVALID_LABEL, f'"label" must be finite, got {json_text(label)}', rid
        )
    return Feedback(rid, label, reply_to)


def dumps(obj: Any) -> bytes:
    """Compact JSON as sent on the wire (NaN is never emitted: it is not JSON)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
