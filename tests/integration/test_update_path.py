"""The update path against hostile input: a real agent, a real Mosquitto, real models.

Signed desired state (device, revision, expiry), replays and downgrades, artifact
statements bound to name and version, size limits, the secure default, key
rotation, and an updater that survives every document it is sent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop_control.infra.signing import generate_keypair, load_signing_key
from edgeloop_control.infra.workspace import Workspace
from tests.integration.models import Artifact, sample_features, sensor_model
from tests.integration.signed import envelope, sign_entry
from tests.mqtt_helpers import VENV_BIN, AgentProcess, Probe

DEVICE = "upd-1"
STATUS = f"edgeloop/{DEVICE}/status"
DESIRED = f"edgeloop/{DEVICE}/desired"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    generate_keypair(tmp_path / "old.key", tmp_path / "old.pub")
    generate_keypair(tmp_path / "new.key", tmp_path / "new.pub")
    return {
        "old": load_signing_key(tmp_path / "old.key"),
        "new": load_signing_key(tmp_path / "new.key"),
        "old.pub": tmp_path / "old.pub",
        "new.pub": tmp_path / "new.pub",
    }


def publish_models(probe: Probe, *arts: Artifact) -> None:
    for art in arts:
        probe.publish(f"edgeloop/models/{art.name}/{art.version}", art.data, retain=True)


def start(agents, broker, tmp_path: Path, *extra: str, state: str = "state", **kw) -> AgentProcess:
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / state,
        extra=list(extra),
        **kw,
    ).start()
    agents.append(agent)
    return agent


def wait_revision(probe: Probe, revision: int, timeout: float = 30.0) -> dict[str, Any]:
    return probe.wait_for(STATUS, lambda s: s.get("revision") == revision, timeout)


def wait_error(probe: Probe, code: str, timeout: float = 30.0) -> dict[str, Any]:
    """The next status whose update error has ``code``."""
    return probe.wait_for(
        STATUS, lambda s: (s.get("last_update_error") or {}).get("code") == code, timeout
    )


def send_and_expect(probe: Probe, payload: bytes | dict, code: str) -> dict[str, Any]:
    """Publish a document, wait for it to be refused with ``code``; the error is new."""
    marker = time.time()
    probe.publish(DESIRED, payload, retain=True)
    status = probe.wait_for(
        STATUS,
        lambda s: (
            (s.get("last_update_error") or {}).get("code") == code
            and s["last_update_error"]["ts"] >= marker
        ),
        30,
    )
    return status


def predict_version(probe: Probe) -> str:
    corr = f"c-{time.monotonic_ns()}"
    probe.publish(
        f"edgeloop/{DEVICE}/predict",
        {"id": corr, "features": sample_features(1)[0]},
        response_topic="replies/u",
    )
    while True:
        reply = probe.next_json(10, topic="replies/u")
        if reply.get("id") == corr:
            return reply["version"]


# -- secure by default -----------------------------------------------------------------


def test_without_a_trusted_key_unsigned_state_is_refused_and_warned(
    broker, probe, agents, tmp_path: Path
):
    probe.subscribe(STATUS)
    v1 = sensor_model("v1")
    publish_models(probe, v1)
    agent = start(agents, broker, tmp_path, unsigned_by_default=False)
    probe.wait_for(STATUS, lambda s: s.get("online") is True)
    status = send_and_expect(probe, {"revision": 1, "models": [v1.entry()]}, "desired_unsigned")
    assert status["state"] == "no_model" and status["allow_unsigned"] is False
    assert "--allow-unsigned" in status["last_update_error"]["message"]
    agent.stop()
    assert "no --trusted-key" in agent.log_path.read_text()


def test_allow_unsigned_is_explicit_warned_and_on_status(broker, probe, agents, tmp_path: Path):
    probe.subscribe(STATUS)
    v1 = sensor_model("v1")
    publish_models(probe, v1)
    agent = start(agents, broker, tmp_path, "--allow-unsigned", unsigned_by_default=False)
    probe.publish(DESIRED, {"revision": 1, "models": [v1.entry()]}, retain=True)
    status = wait_revision(probe, 1)
    assert status["allow_unsigned"] is True
    # The operator sees it in `edgeloop fleet`, in JSON and in the table.
    edgeloop = str(VENV_BIN / "edgeloop")
    env = {**os.environ, "EDGELOOP_BROKER": broker.url, "COLUMNS": "200"}
    ws = tmp_path / "ws"
    Workspace.init(ws)  # a config file is all `edgeloop fleet` needs
    out = subprocess.run(
        [edgeloop, "-w", str(ws), "fleet", "--json"], env=env, capture_output=True, text=True
    )
    [row] = [r for r in json.loads(out.stdout) if r["device"] == DEVICE]
    assert row["allow_unsigned"] is True
    out = subprocess.run(
        [edgeloop, "-w", str(ws), "fleet"], env=env, capture_output=True, text=True
    )
    assert "UNSIGNED ALLOWED" in out.stdout, out.stdout
    agent.stop()
    assert "--allow-unsigned: desired state and models are applied WITHOUT" in (
        agent.log_path.read_text()
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "missing.pub", "does not exist"),
        (lambda p: _write(p / "garbage.pub", b"not a key at all"), "not a PEM public key"),
        (lambda p: p / "old.key", "holds a private key"),
    ],
    ids=["missing", "garbage", "private"],
)
def test_bad_trusted_key_is_one_line_and_exit_2(keys, tmp_path: Path, make, needle):
    path = make(tmp_path)
    proc = subprocess.run(
        [
            str(VENV_BIN / "edgeloop-agent"),
            "--device-id",
            DEVICE,
            "--state-dir",
            str(tmp_path / "state"),
            "--trusted-key",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, lines


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- signed desired state: replay, downgrade, mix-and-match, freeze ------------------------


def test_replays_downgrades_other_devices_and_expired_documents_are_refused(
    broker, probe, agents, tmp_path: Path, keys
):
    probe.subscribe(STATUS)
    probe.subscribe("replies/#")
    key = keys["old"]
    v1, v2 = sensor_model("v1"), sensor_model("v2", algo="rf")
    publish_models(probe, v1, v2)
    agent = start(agents, broker, tmp_path, "--trusted-key", str(keys["old.pub"]))

    rev1 = envelope(DEVICE, 1, [v1.entry()], [key])
    probe.publish(DESIRED, rev1, retain=True)
    wait_revision(probe, 1)
    probe.publish(DESIRED, envelope(DEVICE, 2, [v2.entry()], [key]), retain=True)
    wait_revision(probe, 2)

    # Downgrade to revision 0, and a verbatim replay of revision 1: refused, not applied.
    send_and_expect(probe, envelope(DEVICE, 0, [v1.entry()], [key]), "desired_replayed")
    status = send_and_expect(probe, rev1, "desired_replayed")
    assert status["revision"] == 2 and status["applied_revision"] == 2
    # Same revision, different content.
    send_and_expect(probe, envelope(DEVICE, 2, [v1.entry()], [key]), "desired_replayed")
    # Another device's (validly signed) document: mix-and-match.
    send_and_expect(probe, envelope("upd-2", 3, [v1.entry()], [key]), "desired_wrong_device")
    # A signed document with no device at all.
    send_and_expect(probe, envelope(None, 3, [v1.entry()], [key]), "desired_wrong_device")
    # Expired (freeze): never applied, the current model keeps serving.
    send_and_expect(
        probe, envelope(DEVICE, 3, [v1.entry()], [key], expires=time.time() - 1), "desired_expired"
    )
    # Unsigned, and signed by an untrusted key.
    send_and_expect(probe, {"revision": 9, "models": [v1.entry()]}, "desired_unsigned")
    send_and_expect(
        probe, envelope(DEVICE, 9, [v1.entry()], [keys["new"]]), "desired_signature_invalid"
    )
    # The payload altered under a good signature.
    forged = json.loads(envelope(DEVICE, 9, [v1.entry()], [key]))
    other = json.loads(envelope(DEVICE, 10, [v1.entry()], [key]))
    forged["payload"] = other["payload"]
    forged["signatures"] = [{"keyid": "x", "sig": other["signatures"][0]["sig"][::-1]}]
    send_and_expect(probe, json.dumps(forged).encode(), "desired_signature_invalid")
    assert predict_version(probe) == "v2"

    # The last applied revision survives a restart: the replay is still refused.
    agent.stop()
    assert json.loads((tmp_path / "state" / "applied.json").read_text())["revision"] == 2
    agent = start(agents, broker, tmp_path, "--trusted-key", str(keys["old.pub"]))
    wait_revision(probe, 2)
    send_and_expect(probe, rev1, "desired_replayed")
    assert predict_version(probe) == "v2"
    # And the next genuine revision applies.
    probe.publish(DESIRED, envelope(DEVICE, 3, [v1.entry()], [key]), retain=True)
    status = wait_revision(probe, 3)
    assert status["models"][0]["version"] == "v1"


def test_expired_document_being_served_keeps_serving_and_says_so(
    broker, probe, agents, tmp_path: Path, keys
):
    probe.subscribe(STATUS)
    probe.subscribe("replies/#")
    v1 = sensor_model("v1")
    publish_models(probe, v1)
    start(agents, broker, tmp_path, "--trusted-key", str(keys["old.pub"]))
    probe.publish(
        DESIRED,
        envelope(DEVICE, 1, [v1.entry()], [keys["old"]], expires=time.time() + 3),
        retain=True,
    )
    wait_revision(probe, 1)
    status = probe.wait_for(STATUS, lambda s: s.get("desired_expired") is True, 30)
    assert status["state"] == "serving" and status["revision"] == 1
    assert predict_version(probe) == "v1"


def test_artifact_bytes_are_bound_to_their_name_and_version(
    broker, probe, agents, tmp_path: Path, keys
):
    """The signed bytes of sensor@v1 are refused as totally-other-model@v999."""
    probe.subscribe(STATUS)
    key = keys["old"]
    v1 = sensor_model("v1")
    impostor = Artifact("totally-other-model", "v999", v1.data, v1.features)
    publish_models(probe, v1, impostor)
    start(agents, broker, tmp_path, "--trusted-key", str(keys["old.pub"]))
    v1_sig = sign_entry(v1.entry(), key)["signature"]
    status = send_and_expect(
        probe,
        envelope(DEVICE, 1, [impostor.entry(signature=v1_sig)], [key]),
        "artifact_signature_invalid",
    )
    assert status["state"] == "no_model"
    assert not list((tmp_path / "state" / "models").glob("totally-other-model*"))


# -- sizes ------------------------------------------------------------------------------


def test_oversize_documents_and_artifacts_are_refused_before_memory(
    broker, probe, agents, tmp_path: Path, keys
):
    probe.subscribe(STATUS)
    key = keys["old"]
    v1 = sensor_model("v1")
    publish_models(probe, v1)
    start(
        agents,
        broker,
        tmp_path,
        "--trusted-key",
        str(keys["old.pub"]),
        "--max-desired-bytes",
        "20000",
        "--max-artifact-bytes",
        str(v1.size + 10),
    )
    probe.wait_for(STATUS, lambda s: s.get("online") is True)
    # A document over the limit is refused unparsed.
    big = envelope(DEVICE, 1, [v1.entry()], [key], settings={"pad": "x" * 30000})
    send_and_expect(probe, big, "desired_too_large")
    # A declared size over the limit is refused before the topic is subscribed.
    huge = {**v1.entry(), "size": 10**9}
    status = send_and_expect(probe, envelope(DEVICE, 2, [huge], [key]), "artifact_too_large")
    assert "declares 1000000000 bytes" in status["last_update_error"]["message"]
    # A received payload whose length differs from the declared size is not hashed.
    short = {**v1.entry(), "size": v1.size - 1}
    send_and_expect(probe, envelope(DEVICE, 3, [short], [key]), "artifact_size_mismatch")
    # Bigger than the agent's MQTT 5 Maximum Packet Size: the broker never sends it.
    probe.publish(DESIRED, b"{" + b" " * 2_000_000 + b"}")
    deadline = time.monotonic() + 10
    while "Dropping too large outgoing PUBLISH" not in broker.log_path.read_text():
        assert time.monotonic() < deadline, "the broker delivered a 2 MB message"
        time.sleep(0.1)
    probe.publish(DESIRED, envelope(DEVICE, 4, [v1.entry()], [key]), retain=True)
    wait_revision(probe, 4)


# -- hostile documents never stop the updater -----------------------------------------


def _drain(sock: socket.socket, into: list[bytes]) -> None:
    """Read sd_notify datagrams as systemd would (an unread socket fills up)."""
    while True:
        try:
            into.append(sock.recv(65536))
        except OSError:
            return


def _deep(n: int) -> bytes:
    return b'{"revision": 1, "models": ' + b"[" * n + b"]" * n + b"}"


def test_hostile_documents_are_reported_and_the_next_revision_applies(
    broker, probe, agents, tmp_path: Path
):
    """Each of these killed the updater thread (or the connection) before."""
    probe.subscribe(STATUS)
    v1, v2 = sensor_model("v1"), sensor_model("v2", algo="rf")
    publish_models(probe, v1, v2)
    # sd_notify on: the lone surrogate used to raise while telling systemd the status.
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    notes: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(sock, notes), daemon=True)
    reader.start()
    try:
        agent = start(
            agents,
            broker,
            tmp_path,
            "--allow-unsigned",
            "--max-desired-bytes",
            "2000000",
            env={"NOTIFY_SOCKET": str(notify)},
            unsigned_by_default=False,
        )
        probe.publish(DESIRED, {"revision": 1, "models": [v1.entry()]}, retain=True)
        wait_revision(probe, 1)
        e2 = v2.entry()
        hostile: list[tuple[bytes | dict, str]] = [
            (_deep(5000), "invalid_desired_state"),
            ({"revision": 2, "models": [{**e2, "weight": 10**400}]}, "invalid_desired_state"),
            ({"revision": 2, "models": [{**e2, "variant": "\ud800"}]}, "invalid_desired_state"),
            ({"revision": 2, "models": [{**e2, "name": "sensor\n"}]}, "invalid_desired_state"),
            ({"revision": 2, "models": [{**e2, "version": "v2\n"}]}, "invalid_desired_state"),
            ({"revision": 2, "models": [{**e2, "weight": 1e308 * 10}]}, "invalid_desired_state"),
            ({"revision": 10**30, "models": [e2]}, "invalid_desired_state"),
            (b"\xff\xfe garbage", "invalid_desired_state"),
            (b"[]", "invalid_desired_state"),
        ]
        for payload, code in hostile:
            if isinstance(payload, dict):
                payload = json.dumps(payload).encode()  # \ud800 stays a JSON escape
            send_and_expect(probe, payload, code)
        probe.publish(DESIRED, {"revision": 2, "models": [e2]}, retain=True)
        status = wait_revision(probe, 2)
        assert status["models"][0]["version"] == "v2" and status["threads"] == []
        assert agent.alive()
        assert any(b"serving revision 2" in n for n in notes), notes[-5:]
        log = agent.log_path.read_text()
        assert "Traceback" not in log and "disconnected" not in log.lower(), log[-2000:]
    finally:
        sock.close()


# -- key rotation -------------------------------------------------------------------------


def test_key_rotation_add_new_sign_with_new_remove_old(broker, probe, agents, tmp_path: Path, keys):
    probe.subscribe(STATUS)
    v1, v2 = sensor_model("v1"), sensor_model("v2", algo="rf")
    publish_models(probe, v1, v2)
    old, new = keys["old"], keys["new"]
    # 0. The fleet trusts the old key only.
    agent = start(agents, broker, tmp_path, "--trusted-key", str(keys["old.pub"]))
    probe.publish(DESIRED, envelope(DEVICE, 1, [v1.entry()], [old]), retain=True)
    wait_revision(probe, 1)
    agent.stop()
    # 1. Devices get the new public key beside the old one.
    both = ["--trusted-key", str(keys["old.pub"]), "--trusted-key", str(keys["new.pub"])]
    agent = start(agents, broker, tmp_path, *both)
    wait_revision(probe, 1)  # the old key's document still verifies (retained copy)
    # 2. The control node signs with the new key.
    probe.publish(DESIRED, envelope(DEVICE, 2, [v2.entry()], [new]), retain=True)
    wait_revision(probe, 2)
    agent.stop()
    # 3. The old key is removed from devices: its documents are refused from now on.
    agent = start(agents, broker, tmp_path, "--trusted-key", str(keys["new.pub"]))
    wait_revision(probe, 2)
    send_and_expect(probe, envelope(DEVICE, 3, [v1.entry()], [old]), "desired_signature_invalid")
    # A document whose artifact statement is still by the old key is refused too.
    mixed = envelope(DEVICE, 3, [sign_entry(v1.entry(), old)], [new])
    send_and_expect(probe, mixed, "artifact_signature_invalid")
    probe.publish(DESIRED, envelope(DEVICE, 4, [v1.entry()], [new]), retain=True)
    wait_revision(probe, 4)


def _unused(_: Ed25519PrivateKey) -> None:  # keeps the import for type readers
    return None
