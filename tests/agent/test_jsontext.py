"""Error messages quote values as JSON (the sender's language), clipped, by one helper."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from edgeloop_agent.wire.jsontext import clip, json_kind, json_text
from edgeloop_agent.wire.modelmeta import ModelMeta, ModelMetaError

AGENT_SRC = Path(__file__).resolve().parents[2] / "agent" / "src" / "edgeloop_agent"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("abc", '"abc"'),
        ([1, 2], "[1, 2]"),
        ({"a": [1, None]}, '{"a": [1, null]}'),
        (1.5, "1.5"),
        (math.nan, "NaN"),
        (-math.inf, "-Infinity"),
        (np.float32(0.5), "0.5"),
        (np.int64(7), "7"),
        ("caf\u00e9\n", '"caf\\u00e9\\n"'),  # ASCII only: one log line, whatever the input
        ("\ud800", '"\\ud800"'),
        (b"raw", "b'raw'"),  # not JSON at all: ascii() says what it is
    ],
)
def test_values_are_quoted_as_json(value, text):
    assert json_text(value) == text


def test_long_values_are_clipped_with_a_marker():
    text = json_text("x" * 500)
    assert len(text) == 80 and text.endswith("...") and text.startswith('"xxx')
    assert json_text(list(range(1000)), 20) == "[0, 1, 2, 3, 4, 5..."
    assert clip("short") == "short"


def test_json_kinds():
    kinds = [json_kind(v) for v in (None, True, 1, 1.5, "s", [1], {"a": 1})]
    assert kinds == [
        "null",
        "a boolean",
        "a number",
        "a number",
        "a string",
        "an array",
        "an object",
    ]


def test_model_metadata_knows_bool_features_and_names_an_unknown_dtype():
    meta = {
        "format": 1,
        "task": "regression",
        "features": [{"name": "on", "dtype": "bool"}, {"name": "t", "dtype": "float"}],
        "inputs": [{"name": "numeric", "dtype": "float32", "features": ["on", "t"]}],
        "outputs": {"value": "variable"},
    }
    parsed = ModelMeta.from_dict(meta)
    assert parsed.numeric_feature_names == ["on", "t"]
    assert ModelMeta.from_json(parsed.to_json()) == parsed
    meta["features"][0]["dtype"] = "date"
    with pytest.raises(ModelMetaError) as err:
        ModelMeta.from_dict(meta)
    assert str(err.value) == (
        'feature "on" has unsupported dtype "date" (this agent knows float, bool and string)'
    )
    meta["features"][0]["dtype"] = "bool"
    meta["inputs"] = [
        {"name": "numeric", "dtype": "float32", "features": ["t"]},
        {"name": "categorical", "dtype": "string", "features": ["on"]},
    ]
    with pytest.raises(
        ModelMetaError, match=r'input "categorical" is string but features \["on"\]'
    ):
        ModelMeta.from_dict(meta)


# f-strings in agent/src that embed a value with !r (Python's repr), or repr() itself.
# The two left are not messages: they write JSON numbers into replies and envelopes,
# where float repr is the shortest round-trip text.
_REPR = re.compile(r"!r\}|\brepr\(")
_ALLOWED = {
    ("model.py", "return [f'\"prediction\":{v!r}' for v in preds]"),
    ("serving.py", '"ms":{ms!r}'),
    ("envelopes.py", "+ repr(float(ts))"),
    ("exposition.py", "text = repr(float(value))"),
}


def test_no_agent_message_quotes_a_value_with_python_repr():
    offenders = []
    for path in sorted(AGENT_SRC.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not _REPR.search(line):
                continue
            if any(path.name == name and frag in line for name, frag in _ALLOWED):
                continue
            offenders.append(f"{path.relative_to(AGENT_SRC)}:{n}: {line.strip()}")
    assert offenders == [], "quote values with wire.jsontext.json_text:\n" + "\n".join(offenders)
