"""The ``agent`` entry of desired state (wire/agentpackage.py), in process."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop_agent.wire.agentpackage import (
    MAX_PACKAGE_BYTES,
    AgentPackage,
    chunk_topic,
    split_chunks,
)
from edgeloop_agent.wire.desired import DesiredState, DesiredStateError, open_envelope
from edgeloop_control.infra.signing import sign_desired

SHA = "cd" * 32
AGENT = {
    "package": "edgeloop-agent",
    "version": "0.2.0+site1",
    "architecture": "arm64",
    "sha256": SHA,
    "size": 10_000_001,
    "chunk_size": 4 * 1024 * 1024,
}
MODEL = {"name": "m", "version": "v1", "sha256": "ab" * 32, "size": 10}


def document(**agent_over: Any) -> dict[str, Any]:
    return {
        "revision": 4,
        "device": "d1",
        "expires": int(time.time() + 600),
        "models": [MODEL],
        "agent": {**AGENT, **agent_over},
    }


def test_a_signed_agent_entry_is_parsed_and_round_trips():
    key = Ed25519PrivateKey.generate()
    raw = sign_desired(document(), [key])
    opened = open_envelope(raw, keys=[key.public_key()], allow_unsigned=False)
    desired = DesiredState.from_payload(opened.payload)
    assert desired.agent == AgentPackage("0.2.0+site1", "arm64", SHA, 10_000_001, 4194304)
    assert desired.agent.chunks == 3
    assert [desired.agent.chunk_length(i) for i in range(3)] == [4194304, 4194304, 1611393]
    assert desired.agent.filename == "edgeloop-agent_0.2.0+site1_arm64.deb"
    assert DesiredState.from_dict(desired.to_dict()) == desired


def test_a_document_without_the_key_has_no_agent_and_keeps_its_shape():
    doc = document()
    del doc["agent"]
    desired = DesiredState.from_dict(doc)
    assert desired.agent is None
    assert "agent" not in desired.to_dict()  # what older agents saved, unchanged


@pytest.mark.parametrize("field", ["version", "sha256", "size"])
def test_an_agent_entry_changed_after_signing_is_refused(field: str):
    key = Ed25519PrivateKey.generate()
    envelope = json.loads(sign_desired(document(), [key]))
    inner = json.loads(base64.b64decode(envelope["payload"]))
    inner["agent"][field] = {"version": "9.9.9", "sha256": "0" * 64, "size": 5}[field]
    envelope["payload"] = base64.b64encode(json.dumps(inner).encode()).decode()
    with pytest.raises(DesiredStateError) as err:
        open_envelope(json.dumps(envelope).encode(), keys=[key.public_key()], allow_unsigned=False)
    assert err.value.code == "desired_signature_invalid"


def test_an_unsigned_agent_entry_is_refused_by_an_agent_with_a_key():
    key = Ed25519PrivateKey.generate()
    with pytest.raises(DesiredStateError) as err:
        open_envelope(
            json.dumps(document()).encode(), keys=[key.public_key()], allow_unsigned=False
        )
    assert err.value.code == "desired_unsigned"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"version": "1.0\n"}, "agent.version"),
        ({"version": "../../etc/passwd"}, "agent.version"),
        ({"version": "a1.0"}, "agent.version"),
        ({"version": "1" * 65}, "agent.version"),
        ({"architecture": "amd64/../x"}, "agent.architecture"),
        ({"sha256": SHA.upper()}, "agent.sha256"),
        ({"size": 0}, "agent.size"),
        ({"size": MAX_PACKAGE_BYTES + 1}, "agent.size"),
        ({"size": True}, "agent.size"),
        ({"size": 1.5}, "agent.size"),
        ({"chunk_size": 100}, "agent.chunk_size"),
        ({"chunk_size": 64 * 1024 * 1024}, "agent.chunk_size"),
        ({"package": "bash"}, "agent.package"),
    ],
)
def test_bad_agent_entries_are_one_clear_error(override: dict[str, Any], needle: str):
    with pytest.raises(DesiredStateError) as err:
        DesiredState.from_dict(document(**override))
    assert err.value.code == "invalid_agent_package"
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_not_an_object_is_refused():
    doc = document()
    doc["agent"] = "0.2.0"
    with pytest.raises(DesiredStateError, match="'agent' must be an object"):
        DesiredState.from_dict(doc)


def test_chunks_reassemble_and_live_under_models_one_level_deeper_than_artifacts():
    data = bytes(range(256)) * 40
    chunks = split_chunks(data, 1024)
    assert b"".join(chunks) == data and len(chunks) == 10
    assert chunk_topic("edgeloop", SHA, 3) == f"edgeloop/models/_agent/{SHA}/3"
