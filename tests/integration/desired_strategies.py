"""Hypothesis strategies for hostile desired-state messages (tests and bench/fuzz_agent_desired.py).

Each example is the raw bytes of one MQTT message on ``{prefix}/{device}/desired``:
random bytes, random JSON, deep nesting, envelope-shaped garbage, and (most of
them) a valid document with one or more fields replaced by something hostile,
so the fuzzer reaches the checks behind the first ones.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "sensor\n",
            "v1\n",
            "\ud800",
            "a\x00b",
            "models",
            "..",
            "a/b",
            "+",
            "#",
            "$SYS",
            "x" * 300,
            "é",
            "\ufffe",
            "",
            " ",
        ]
    ),
)
HOSTILE_NUMBER = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -1, 0, 2**63, 2**64, 1e308, -0.0, True, False]),
)
JSON_LEAF = st.one_of(st.none(), st.booleans(), HOSTILE_NUMBER, HOSTILE_TEXT)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(HOSTILE_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)

FIELDS = ["name", "version", "sha256", "size", "signature", "role", "weight", "variant"]
TOP = ["revision", "models", "allocation", "settings", "experiment", "device", "expires"]


def _dumps(value: Any) -> bytes:
    # allow_nan: NaN/Infinity are what a hostile sender would write; surrogates stay escaped.
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def mutated_document(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            key = draw(st.sampled_from(TOP))
            if draw(st.integers(0, 4)) == 0:
                doc.pop(key, None)
            else:
                doc[key] = draw(JSON_ANY)
        else:
            models = doc.get("models")
            if isinstance(models, list) and models and isinstance(models[0], dict):
                key = draw(st.sampled_from(FIELDS))
                if draw(st.integers(0, 4)) == 0:
                    models[0].pop(key, None)
                else:
                    models[0][key] = draw(JSON_ANY)
    return _dumps(doc)


def hostile_message(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    deep = st.integers(10, 100_000).map(
        lambda n: b'{"revision": 5, "models": ' + b"[" * n + b"]" * n + b"}"
    )
    envelope_like = st.fixed_dictionaries(
        {"payloadType": JSON_ANY, "payload": JSON_ANY, "signatures": JSON_ANY}
    ).map(_dumps)
    return st.one_of(
        st.binary(max_size=512),
        JSON_ANY.map(_dumps),
        deep,
        envelope_like,
        mutated_document(base),
        mutated_document(base),
        mutated_document(base),
    )
