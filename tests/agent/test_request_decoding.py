"""Payload decoding before parsing: size, encoding and nesting depth."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeloop_agent.protocol import (
    MAX_JSON_DEPTH,
    Code,
    RequestError,
    decode_json_object,
    json_depth,
    parse_feedback,
    parse_predict,
)

# Wall-clock bounds: make test runs this module after the parallel phase, alone.
pytestmark = pytest.mark.serial

LIMIT = 64 * 1024


def refused(payload: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_json_object(payload, LIMIT)
    return info.value


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
        b"[" * 60_000,  # unterminated: the parser would recurse before it saw the end
        b'{"id":"x","features":' + b"[" * 5000,
    ],
)
def test_deep_nesting_is_refused_before_parsing(payload):
    exc = refused(payload)
    assert exc.code == Code.TOO_DEEP
    assert f"limit is {MAX_JSON_DEPTH}" in exc.message


@pytest.mark.parametrize("parse", ["predict", "feedback"])
def test_deep_nesting_through_the_request_parsers(parse):
    payload = b"[" * 1000 + b"]" * 1000
    with pytest.raises(RequestError) as info:
        if parse == "predict":
            parse_predict(payload, max_bytes=LIMIT, max_rows=10)
        else:
            parse_feedback(payload, max_bytes=LIMIT)
    assert info.value.code == Code.TOO_DEEP


def test_brackets_inside_strings_do_not_count():
    payload = json.dumps({"id": "[" * 500 + "{" * 500, "features": [1.0] * 40}).encode()
    assert decode_json_object(payload, LIMIT)["id"].startswith("[[")
    escaped = json.dumps({"id": '\\"[' * 200, "f": [[1]]}).encode()
    assert json_depth(escaped) == 3  # the object, then [[1]]


def test_a_big_batch_is_not_mistaken_for_deep_nesting():
    rows = [[float(i), 2.0, 3.0] for i in range(1000)]
    payload = json.dumps({"id": "b", "rows": rows}).encode()
    assert len(decode_json_object(payload, 1 << 20)["rows"]) == 1000


def test_depth_scan_is_linear_on_escaped_quotes():
    # A string regex that handles escapes itself rescans the rest of the payload
    # from every escaped quote here (quadratic: seconds for 64 KB).
    payload = b'"' + b'\\"' * 30_000 + b"[" * 40
    started = time.perf_counter()
    json_depth(payload)
    assert time.perf_counter() - started < 0.5


@given(st.recursive(st.none() | st.integers() | st.text(), lambda c: st.lists(c, max_size=3)))
def test_depth_scan_matches_the_real_depth(value):
    def depth(v):
        return 1 + max((depth(x) for x in v), default=0) if isinstance(v, list) else 0

    assert json_depth(json.dumps(value).encode()) == depth(value)


VALID = json.dumps({"id": "r1", "features": {"a": 1.5}, "note": "caf\u00e9"}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (VALID.encode("utf-16"), "UTF-16 byte-order mark"),
        (VALID.encode("utf-16-le"), "NUL"),
        (VALID.encode("utf-16-be"), "NUL"),
        (VALID.encode("utf-32"), "UTF-32 byte-order mark"),
        (VALID.encode("utf-32-le"), "NUL"),
        (VALID.encode("utf-32-be"), "NUL"),
        (VALID.encode("utf-8-sig"), "UTF-8 byte-order mark"),
        (VALID.encode("latin-1"), "not valid UTF-8"),
        (b'{"id":"\xed\xa0\x80"}', "not valid UTF-8"),  # an encoded surrogate
        (b'{"id":"a\x00"}', "NUL"),
    ],
)
def test_anything_but_utf8_is_refused_with_a_clear_code(payload, needle):
    exc = refused(payload)
    assert exc.code == Code.INVALID_ENCODING
    assert needle in exc.message


def test_utf8_still_parses():
    assert decode_json_object(VALID.encode(), LIMIT)["note"] == "caf\u00e9"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_anything_but_request_error(payload):
    with contextlib.suppress(RequestError):
        decode_json_object(payload, LIMIT)


def test_reply_to_must_be_a_string_here_and_a_topic_at_the_server():
    with pytest.raises(RequestError) as info:
        parse_predict(b'{"id":"x","features":[1],"reply_to":5}', max_bytes=LIMIT, max_rows=1)
    assert info.value.code == Code.INVALID_REPLY_TO
    # Wildcards etc. are judged by the reply policy, which also sees MQTT 5 topics.
    req = parse_predict(b'{"id":"x","features":[1],"reply_to":"a/+"}', max_bytes=LIMIT, max_rows=1)
    assert req.reply_to == "a/+"
