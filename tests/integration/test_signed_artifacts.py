"""An agent with a trusted key refuses unsigned and mis-signed models (artifact statements)."""

from __future__ import annotations

import base64
from pathlib import Path

from edgeloop_control.infra.signing import ensure_keypair, generate_keypair, load_signing_key, sign
from edgeloop_control.infra.workspace import Workspace
from tests.integration.models import sample_features, sensor_model
from tests.integration.signed import envelope, sign_entry
from tests.integration.test_agent_e2e import publish_deployment, wait_status
from tests.mqtt_helpers import AgentProcess

DEVICE = "signed-1"


def test_signature_is_required_and_checked(broker, probe, agents, tmp_path: Path):
    ws = Workspace.init(tmp_path / "ws")
    key = ensure_keypair(ws.signing_key_path, ws.public_key_path)
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe("replies/#")
    agents.append(
        AgentProcess(
            broker_url=broker.url,
            device_id=DEVICE,
            state_dir=tmp_path / "state",
            extra=["--trusted-key", str(ws.public_key_path)],
        ).start()
    )
    v1 = sensor_model("v1")
    v2 = sensor_model("v2", algo="rf")
    for art in (v1, v2):
        probe.publish(f"edgeloop/models/{art.name}/{art.version}", art.data, retain=True)

    def send(revision: int, entry: dict, sign_artifacts: bool = True) -> None:
        doc = envelope(DEVICE, revision, [entry], [key], sign_artifacts=sign_artifacts)
        probe.publish(f"edgeloop/{DEVICE}/desired", doc, retain=True)

    # Document and artifact statement signed by the workspace key: accepted.
    send(1, v1.entry())
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)

    # Unsigned artifact (in a signed document).
    send(2, v2.entry(), sign_artifacts=False)
    status = wait_status(probe, DEVICE, lambda s: (s.get("error") or {}).get("revision") == 2)
    assert status["error"]["code"] == "artifact_signature_invalid"
    assert "signature" in status["error"]["message"]
    # Artifact statement signed by a key the device does not trust.
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    rogue = load_signing_key(tmp_path / "rogue.key")
    send(3, sign_entry(v2.entry(), rogue))
    status = wait_status(probe, DEVICE, lambda s: (s.get("error") or {}).get("revision") == 3)
    assert status["error"]["code"] == "artifact_signature_invalid"
    # The trusted key's signature of v1's statement does not cover v2.
    send(4, v2.entry(signature=sign_entry(v1.entry(), key)["signature"]))
    status = wait_status(probe, DEVICE, lambda s: (s.get("error") or {}).get("revision") == 4)
    assert status["error"]["code"] == "artifact_signature_invalid"
    # Nor does the registry's signature over the raw ONNX bytes (not a statement).
    send(5, v2.entry(signature=sign(v2.data, key)))
    status = wait_status(probe, DEVICE, lambda s: (s.get("error") or {}).get("revision") == 5)
    assert status["error"]["code"] == "artifact_signature_invalid"
    # Garbage.
    garbage = base64.b64encode(b"x" * 64).decode()
    send(6, v2.entry(signature=garbage))
    status = wait_status(probe, DEVICE, lambda s: (s.get("error") or {}).get("revision") == 6)
    assert status["error"]["code"] == "artifact_signature_invalid"
    assert status["revision"] == 1 and status["models"][0]["version"] == "v1"
    probe.publish(
        f"edgeloop/{DEVICE}/predict",
        {"id": "still-v1", "features": sample_features(1)[0]},
        response_topic="replies/s",
    )
    assert probe.next_json(10, topic="replies/s")["version"] == "v1"
    assert not list((tmp_path / "state" / "models").glob("sensor@v2-*"))
    # Properly signed v2 still applies after all those refusals.
    send(7, v2.entry())
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 7)


def test_desired_state_with_bad_variants_or_weights_is_reported(broker, probe, agents, tmp_path):
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    agents.append(
        AgentProcess(broker_url=broker.url, device_id=DEVICE, state_dir=tmp_path / "state").start()
    )
    v1, v2 = sensor_model("v1"), sensor_model("v2", algo="rf")
    publish_deployment(probe, DEVICE, 1, [(v1, v1.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    probe.publish("edgeloop/models/sensor/v2", v2.data, retain=True)
    cases = [
        (
            {"revision": 2, "models": [v1.entry(), {**v2.entry(), "variant": "sensor@v1"}]},
            "repeats variants",
        ),
        ({"revision": 3, "models": [v1.entry(weight=0), v2.entry(weight=0)]}, "sum to 0"),
        ({"revision": 4, "models": [v1.entry(weight=-5)]}, "non-negative"),
        ({"revision": 5, "models": [v1.entry(role="shadow")]}, "no serving model"),
        ({"revision": 6, "models": [v1.entry(), {**v1.entry(), "variant": "again"}]}, "twice"),
        (
            {
                "revision": 7,
                "models": [v1.entry(weight=50), v2.entry(weight=50)],
                "allocation": {"experiment_id": "e", "ranges": {"sensor@v1": [[0, 10000]]}},
            },
            "allocation",
        ),
    ]
    for doc, needle in cases:
        probe.publish(f"edgeloop/{DEVICE}/desired", doc, retain=True)
        status = wait_status(
            probe, DEVICE, lambda s, n=needle: n in ((s.get("error") or {}).get("message") or "")
        )
        assert status["revision"] == 1, status
