"""The wire both sides share: the number rule, the topic builder, the outbox envelope."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from edgeloop_agent.outbox import Outbox
from edgeloop_agent.wire.envelopes import encode_envelope, envelope_record, is_envelope
from edgeloop_agent.wire.numeric import is_number
from edgeloop_agent.wire.topics import DEVICE_LEAVES, Topics, artifact_topic

# -- what counts as a number ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, -3, 10**400, 0.0, -0.0, 1.5, 1e308, np.float32(2.5), np.int64(7), np.float64(-1e-300)],
)
def test_finite_reals_are_numbers(value: object) -> None:
    assert is_number(value)
    assert is_number(value, finite=False)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.True_])
def test_a_bool_is_never_a_number(value: object) -> None:
    assert not is_number(value)
    assert not is_number(value, finite=False)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"), float("-inf")]
)
def test_nan_and_inf_are_numbers_only_when_asked(value: object) -> None:
    assert not is_number(value)
    assert is_number(value, finite=False)


@pytest.mark.parametrize("value", [None, "1", b"1", [1], {"x": 1}, 1j, np.array([1.0])])
def test_non_reals_are_not_numbers(value: object) -> None:
    assert not is_number(value)
    assert not is_number(value, finite=False)


def test_other_reals_must_fit_a_float_to_be_finite() -> None:
    assert is_number(Fraction(1, 3))
    huge = Fraction(10**400, 3)  # finite, but no float holds it
    assert not is_number(huge)
    assert is_number(huge, finite=False)


def test_every_former_number_helper_is_gone() -> None:
    """The rule lives in one place; a private copy would drift from it again."""
    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("agent/src/**/*.py"), *root.glob("control/src/**/*.py")]
    copies = [str(p) for p in sources if "def _is_number(" in p.read_text(encoding="utf-8")]
    assert copies == []


# -- topics ------------------------------------------------------------------------------


def test_device_topics_and_filters_share_one_layout() -> None:
    t = Topics("dev-1", "site/a")
    assert (t.status, t.desired, t.predict) == (
        "site/a/dev-1/status",
        "site/a/dev-1/desired",
        "site/a/dev-1/predict",
    )
    for leaf in DEVICE_LEAVES:
        assert getattr(t, leaf) == f"site/a/dev-1/{leaf}"
        assert Topics.every_device(leaf, "site/a") == f"site/a/+/{leaf}"
        assert Topics.split(getattr(t, leaf), "site/a") == ("dev-1", leaf)
    assert Topics.every_artifact("site/a") == "site/a/models/#"
    assert artifact_topic("site/a", "m", "v2") == "site/a/models/m/v2"
    assert Topics.bridge_notification("plant-7", "site/a") == "site/a/broker/plant-7/bridge"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Topics.every_device("nope"), 'topic leaf "nope" is not one of'),
        (lambda: Topics.every_device("status", "a/+"), "must be non-empty without +"),
        (lambda: Topics.every_artifact("a/"), "must not end with /"),
        (lambda: Topics.bridge_notification("a b"), 'site name "a b" must be letters'),
        (lambda: Topics.split("edgeloop/d1", "edgeloop"), "is not edgeloop/<device>/<leaf>"),
        (lambda: Topics.split("other/d1/status", "edgeloop"), "is not edgeloop/<device>/<leaf>"),
        (lambda: Topics.split("edgeloop/d1/a/b", "edgeloop"), "is not edgeloop/<device>/<leaf>"),
    ],
)
def test_bad_topic_parts_are_refused_in_one_line(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        call()  # type: ignore[operator]
    assert "\n" not in str(err.value)


def test_control_node_spells_no_topic_by_hand() -> None:
    """Topics and filters come from Topics: no f-string in the control node writes one."""
    root = Path(__file__).resolve().parents[2] / "control/src/edgeloop_control"
    # Being rewritten by other changes of issue 9; they switch to Topics there.
    pending: set[str] = set()
    leaves = [f"/{leaf}" for leaf in DEVICE_LEAVES if leaf != "events"]  # /events: a web page
    hints = ("/+/", "/#", "/models/{", "/broker/", *leaves)
    hand_made = []
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root))
        if name in pending:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.JoinedStr):
                continue
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            # URL paths (web pages) start with "/", a topic never does; "/#" ends a filter.
            url = text.startswith("/") or "#/" in text
            if not url and "{}/" in text and any(h in text for h in hints):
                hand_made.append(f"{name}:{node.lineno}: {text}")
    assert hand_made == []


# -- the outbox envelope -----------------------------------------------------------------------


def test_envelope_bytes_equal_json_dumps_of_the_whole() -> None:
    payload = {"x": [1, 2.5, None], "é": "ü"}
    body = encode_envelope(
        "d1:b:7", "d1", "samples", 12.0, json.dumps(payload, separators=(",", ":"))
    )
    doc = {"id": "d1:b:7", "device_id": "d1", "kind": "samples", "ts": 12.0, "payload": payload}
    assert body == json.dumps(doc, separators=(",", ":")).encode()
    decoded = json.loads(body)
    assert is_envelope(decoded)
    assert envelope_record(decoded) == payload


def test_a_bare_record_is_its_own_record() -> None:
    record = {"sample_id": "s1", "payload": "not an envelope without a kind"}
    assert not is_envelope(record)
    assert envelope_record(record) is record
    assert not is_envelope([1, 2])


def test_outbox_messages_are_wire_envelopes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", device_id="d1", max_bytes=1 << 20)
    try:
        box.put("edgeloop/d1/samples", {"sample_id": "s1", "features": {"a": 1.0}}, "sample")
        (msg,) = box.peek(10)
        env = msg.envelope()
        assert is_envelope(env)
        assert env["device_id"] == "d1"
        assert envelope_record(env) == {"sample_id": "s1", "features": {"a": 1.0}}
    finally:
        box.close()


def test_the_wire_loads_without_the_agent_runtime() -> None:
    """What the control node imports must not pull the agent's serving stack in."""
    code = (
        "import sys\n"
        "import edgeloop_agent.wire.topics, edgeloop_agent.wire.envelopes\n"
        "import edgeloop_agent.wire.network, edgeloop_agent.wire.numeric\n"
        "import edgeloop_agent.wire.allocation, edgeloop_agent.wire.modelmeta\n"
        "import edgeloop_agent.wire.exposition, edgeloop_agent.wire.names\n"
        "bad = sorted(m for m in sys.modules if m.startswith('edgeloop_agent.')\n"
        "             and not m.startswith('edgeloop_agent.wire'))\n"
        "heavy = sorted(m for m in ('onnxruntime', 'paho', 'numpy') if m in sys.modules)\n"
        "print(bad, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
