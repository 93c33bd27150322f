"""The agent's half of the self-update, with a real agent and a real Mosquitto.

A signed desired document names an agent package; the agent fetches its chunks,
checks size and sha256 against the document and writes the package and
``request.json`` into ``{state}/update/``; the privileged one-shot's own check
(``edgeloop_agent.selfinstall verify``) accepts that request. A package whose
bytes do not match the signed sha256, or whose chunk has the wrong length, is
refused with a code on status and a counter, and the agent keeps serving. The
control side (``fleet/agentpackages.py``) reads a real .deb and the document it
publishes names the package, signed. The whole install/rollback under systemd is
tests/system/test_deb_selfupdate.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeloop_agent.selfinstall import Refused, verify
from edgeloop_agent.selfupdate import dpkg_architecture
from edgeloop_agent.wire.agentpackage import chunk_topic, split_chunks
from edgeloop_agent.wire.desired import DesiredState, open_envelope
from edgeloop_agent.wire.signature import load_public_keys
from edgeloop_control.fleet.agentpackages import AgentPackageRefused, AgentPackages, with_agent
from edgeloop_control.fleet.desired import DesiredState as ControlDesired
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import ensure_keypair, generate_keypair, load_signing_key
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout import FINAL, ROLLED_BACK, RolloutConfig, RolloutManager
from edgeloop_control.policies.rollout.feed import BrokerFeed
from tests.integration.models import sample_features, sensor_model
from tests.integration.signed import envelope
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "self-1"
STATUS = f"edgeloop/{DEVICE}/status"
DESIRED = f"edgeloop/{DEVICE}/desired"
CHUNK = 4096


def package_entry(data: bytes, version: str, **over: Any) -> dict[str, Any]:
    return {
        "package": "edgeloop-agent",
        "version": version,
        "architecture": dpkg_architecture(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "chunk_size": CHUNK,
        **over,
    }


def publish_chunks(probe: Probe, sha: str, data: bytes) -> None:
    for i, chunk in enumerate(split_chunks(data, CHUNK)):
        probe.publish(chunk_topic("edgeloop", sha, i), chunk, retain=True)


def start_agent(broker, agents, tmp_path: Path, trusted_key: Path, *extra: str) -> AgentProcess:
    """The real agent, trusting ``trusted_key``, running package version 1.0.0."""
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=["--trusted-key", str(trusted_key), *extra],
        env={"EDGELOOP_AGENT_PACKAGE_VERSION": "1.0.0"},
    ).start()
    agents.append(agent)
    return agent


@pytest.fixture
def signed_agent(broker, probe, agents, tmp_path: Path):
    generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    key = load_signing_key(tmp_path / "k.key")
    agent = start_agent(broker, agents, tmp_path, tmp_path / "k.pub")
    model = sensor_model("v1")
    probe.publish(f"edgeloop/models/{model.name}/{model.version}", model.data, retain=True)
    probe.subscribe(STATUS)
    probe.subscribe(f"edgeloop/{DEVICE}/predictions")
    return agent, key, model, tmp_path / "state" / "update"


def send(probe: Probe, key, model, revision: int, agent_entry: dict[str, Any]) -> bytes:
    entry = model.entry()
    entry["signature"] = None
    raw = envelope(DEVICE, revision, [entry], [key], agent=agent_entry)
    probe.publish(DESIRED, raw, retain=True)
    return raw


def serves(probe: Probe, rid: str) -> None:
    probe.publish(f"edgeloop/{DEVICE}/predict", {"id": rid, "features": sample_features(1)[0]})
    reply = probe.wait_for(f"edgeloop/{DEVICE}/predictions", lambda r: r.get("id") == rid, 30)
    assert "prediction" in reply, reply


def test_agent_fetches_verifies_and_requests_a_signed_package(
    signed_agent, probe: Probe, tmp_path: Path
):
    agent, key, model, spool = signed_agent
    data = os.urandom(3 * CHUNK + 123)  # four chunks, the last one short
    entry = package_entry(data, "1.1.0+test1")
    publish_chunks(probe, entry["sha256"], data)
    raw = send(probe, key, model, 1, entry)
    status = probe.wait_for(
        STATUS, lambda s: (s.get("agent_update") or {}).get("state") == "requested", 30
    )
    assert status["agent_package_version"] == "1.0.0"
    assert status["agent_update"]["version"] == "1.1.0+test1"
    assert status["revision"] == 1  # the models were applied as usual
    deb = spool / f"edgeloop-agent_1.1.0+test1_{dpkg_architecture()}.deb"
    assert deb.read_bytes() == data
    assert oct(deb.stat().st_mode & 0o777) == "0o600"
    request = json.loads((spool / "request.json").read_text())
    assert request["file"] == deb.name and request["sha256"] == entry["sha256"]
    assert base64.b64decode(request["envelope"]) == raw
    # The root one-shot's own check accepts it, from the device's configuration...
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "{DEVICE}"\ntrusted_keys = ["k.pub"]\n')
    assert verify(spool / "request.json", deb, config, time.time()) == (
        "1.1.0+test1",
        dpkg_architecture(),
    )
    # ...and refuses a package swapped after the agent's check, or another device's key.
    swapped = tmp_path / "swapped.deb"
    swapped.write_bytes(data[:-1] + b"X")
    with pytest.raises(Refused, match="is not the package the signed document pins"):
        verify(spool / "request.json", swapped, config, time.time())
    generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    config.write_text(f'device_id = "{DEVICE}"\ntrusted_keys = ["other.pub"]\n')
    with pytest.raises(Refused, match="desired_signature_invalid"):
        verify(spool / "request.json", deb, config, time.time())
    cli = subprocess.run(
        [
            str(Path(agent.args[0]).with_name("python")),
            "-m",
            "edgeloop_agent.selfinstall",
            "verify",
            str(spool / "request.json"),
            str(deb),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and cli.stderr.startswith("refused: desired_signature_invalid")
    serves(probe, "after-request")


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ("content", "agent_package_sha256_mismatch"),
        ("chunk_length", "agent_package_size_mismatch"),
        ("architecture", "agent_package_wrong_architecture"),
    ],
)
def test_a_package_that_does_not_match_its_document_is_refused_and_counted(
    signed_agent, probe: Probe, tamper: str, code: str
):
    agent, key, model, spool = signed_agent
    data = os.urandom(2 * CHUNK + 10)
    entry = package_entry(data, "1.2.0")
    sent = data
    if tamper == "content":
        sent = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif tamper == "chunk_length":
        sent = data + b"extra"  # the last chunk is longer than the document says
    elif tamper == "architecture":
        entry["architecture"] = "s390x" if dpkg_architecture() != "s390x" else "amd64"
    publish_chunks(probe, entry["sha256"], sent)
    send(probe, key, model, 1, entry)
    status = probe.wait_for(
        STATUS, lambda s: (s.get("last_update_error") or {}).get("code") == code, 30
    )
    assert status["agent_update"]["state"] == "refused"
    assert status["agent_update"]["code"] == code
    assert status["agent_update"]["refused"] == 1
    assert not (spool / "request.json").exists()
    assert not list(spool.glob("*.deb")) and not list(spool.glob(".*.part"))
    assert agent.alive()
    serves(probe, f"after-{tamper}")


def test_an_unsigned_or_tampered_agent_entry_is_refused_before_anything_is_fetched(
    signed_agent, probe: Probe
):
    _agent, key, model, _spool = signed_agent
    data = os.urandom(CHUNK)
    entry = package_entry(data, "1.3.0")
    publish_chunks(probe, entry["sha256"], data)
    raw = send(probe, key, model, 1, entry)
    probe.wait_for(STATUS, lambda s: (s.get("agent_update") or {}).get("state") == "requested")
    # The same document with the agent's sha256 changed after signing.
    doc = json.loads(raw)
    inner = json.loads(base64.b64decode(doc["payload"]))
    inner["revision"] = 2
    inner["agent"]["sha256"] = "0" * 64
    doc["payload"] = base64.b64encode(json.dumps(inner).encode()).decode()
    probe.publish(DESIRED, json.dumps(doc).encode(), retain=True)
    status = probe.wait_for(
        STATUS,
        lambda s: (s.get("last_update_error") or {}).get("code") == "desired_signature_invalid",
    )
    assert status["applied_revision"] == 1


def _tiny_deb(
    tmp_path: Path, version: str, package: str = "edgeloop-agent", arch: str = "amd64"
) -> Path:
    tree = tmp_path / f"tree-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: t <t@example.org>\nDescription: test\n"
    )
    out = tmp_path / f"{package}_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", tree, out], check=True, capture_output=True
    )
    return out


def test_control_publishes_a_package_and_signs_it_into_the_document(broker, tmp_path: Path):
    ws = Workspace.init(tmp_path / "ws", broker=broker.url)
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    store = AgentPackages(ws.root / "agent-packages")
    with pytest.raises(AgentPackageRefused, match="not edgeloop-agent"):
        store.add(_tiny_deb(tmp_path, "1.0", package="something-else"))
    stored = store.add(_tiny_deb(tmp_path, "2.0.1+site1"))
    assert stored.package.version == "2.0.1+site1" and stored.package.architecture == "amd64"
    assert store.get("2.0.1+site1").path.read_bytes() == stored.path.read_bytes()
    with pytest.raises(AgentPackageRefused, match="no published agent package 9"):
        store.get("9")
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    probe = Probe(broker.url)
    try:
        assert store.publish(client, ws.topic_prefix, stored) == 1
        desired = ControlDesired.for_workspace(ws, db, client)
        model = sensor_model("v1")
        desired.publish(DEVICE, desired.plan(DEVICE, [(model, 100.0)], []))
        desired.publish(DEVICE, with_agent(desired.current(DEVICE) or {}, stored.package))
        # A later model deploy keeps the agent entry.
        desired.publish(DEVICE, desired.plan(DEVICE, [(model, 100.0)], []))
        probe.subscribe(DESIRED)
        raw = bytes(probe.next(10, topic=DESIRED).payload)
        keys = load_public_keys([ws.public_key_path])
        opened = open_envelope(raw, keys=keys, allow_unsigned=False)
        doc = DesiredState.from_payload(opened.payload)
        assert doc.revision == 3
        assert doc.agent is not None and doc.agent.version == "2.0.1+site1"
        assert doc.agent.sha256 == hashlib.sha256(stored.path.read_bytes()).hexdigest()
    finally:
        probe.close()
        client.close()
        db.close()


def test_an_agent_rollout_fails_its_gate_when_the_device_refuses_the_package(
    broker, agents, tmp_path: Path
):
    """The rollout machinery with an agent package as its target: published (chunks),
    named in the signed document, and failed by the device's own refusal, then
    rolled back. (Its success path runs under systemd: tests/system.)"""
    ws = Workspace.init(tmp_path / "ws", broker=broker.url)
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    agent = start_agent(broker, agents, tmp_path, ws.public_key_path, "--telemetry-interval", "0.5")
    # Built for another architecture: the agent must refuse it and say so.
    other = "s390x" if dpkg_architecture() != "s390x" else "amd64"
    deb = _tiny_deb(tmp_path, "2.0.0", arch=other)
    AgentPackages.for_workspace(ws).add(deb)
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        desired = ControlDesired.for_workspace(ws, db, client)
        model = sensor_model("v1")
        desired.publish_artifact(model, model.data)
        desired.publish(DEVICE, desired.plan(DEVICE, [(model, 100.0)], []))
        feed = BrokerFeed(client, db, ws.topic_prefix)
        config = RolloutConfig(soak_s=0.5, batch_timeout_s=60.0, max_p99_ms=1000.0)
        manager = RolloutManager(ws, db, client, config=config)
        deadline = time.monotonic() + 20
        while (db.device(DEVICE) or {}).get("status", {}).get("revision") != 1:
            assert time.monotonic() < deadline, db.device(DEVICE)
            feed.pump()
            time.sleep(0.2)
        info = manager.start("edgeloop-agent=2.0.0", devices=[DEVICE])
        assert info["model"] == "edgeloop-agent=2.0.0", info
        deadline = time.monotonic() + 60
        while info["state"] not in FINAL:
            assert time.monotonic() < deadline, info
            feed.pump()
            manager.tick()
            info = manager.status(info["id"])[0]
            time.sleep(0.2)
        assert info["state"] == ROLLED_BACK, info
        assert "agent_package_wrong_architecture" in info["failure"], info
        # The document the device got named the package, signed; the rollback's does not.
        sent = db.desired(DEVICE)
        assert sent is not None and "agent" not in sent[1]
        assert agent.alive()
    finally:
        client.close()
        db.close()


def test_edgeloop_agent_publish_and_list_on_the_command_line(broker, tmp_path: Path):
    edgeloop = str(Path(sys.executable).parent / "edgeloop")
    ws = Workspace.init(tmp_path / "ws", broker=broker.url)
    deb = _tiny_deb(tmp_path, "3.1.4")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [edgeloop, "-w", str(ws.root), *args], capture_output=True, text=True, timeout=60
        )

    published = run("agent", "publish", str(deb), "--json")
    assert published.returncode == 0, published.stderr
    info = json.loads(published.stdout)
    assert info["version"] == "3.1.4" and info["chunks_published"] == 1
    client = ControlClient(broker.url).connect()
    try:
        retained = client.retained(f"edgeloop/models/_agent/{info['sha256']}/+")
    finally:
        client.close()
    assert [m.payload for m in retained] == [deb.read_bytes()]
    listed = run("agent", "list", "--json")
    assert [p["version"] for p in json.loads(listed.stdout)] == ["3.1.4"]
    bad = tmp_path / "not-a.deb"
    bad.write_bytes(b"hello")
    refused = run("agent", "publish", str(bad), "--no-broker")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "not-a.deb" in refused.stderr


def test_a_rolled_back_agent_rollout_names_the_package_the_device_ran(
    broker, agents, tmp_path: Path
):
    """The rollback document tells an upgraded device which package to go back to:
    the one it reported running, when the workspace has it (published again)."""
    ws = Workspace.init(tmp_path / "ws", broker=broker.url)
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    arch = dpkg_architecture()
    start_agent(broker, agents, tmp_path, ws.public_key_path, "--telemetry-interval", "0.5")
    store = AgentPackages.for_workspace(ws)
    old = store.add(_tiny_deb(tmp_path, "1.0.0", arch=arch))
    store.add(_tiny_deb(tmp_path, "2.0.0", arch=arch))
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    reader = ControlClient(broker.url).connect()
    try:
        desired = ControlDesired.for_workspace(ws, db, client)
        model = sensor_model("v1")
        desired.publish_artifact(model, model.data)
        desired.publish(DEVICE, desired.plan(DEVICE, [(model, 100.0)], []))
        feed = BrokerFeed(client, db, ws.topic_prefix)
        deadline = time.monotonic() + 20
        while (db.device(DEVICE) or {}).get("status", {}).get("revision") != 1:
            assert time.monotonic() < deadline, db.device(DEVICE)
            feed.pump()
            time.sleep(0.2)
        # Nothing installs 2.0.0 here (no one-shot), so the batch times out and fails.
        config = RolloutConfig(soak_s=0.5, batch_timeout_s=3.0, max_p99_ms=1000.0)
        manager = RolloutManager(ws, db, client, config=config)
        info = manager.start("edgeloop-agent=2.0.0", devices=[DEVICE])
        deadline = time.monotonic() + 30
        while info["state"] not in FINAL:
            assert time.monotonic() < deadline, info
            feed.pump()
            manager.tick()
            info = manager.status(info["id"])[0]
            time.sleep(0.2)
        assert info["state"] == ROLLED_BACK and "timed out" in info["failure"], info
        sent = db.desired(DEVICE)
        assert sent is not None and sent[1]["agent"]["version"] == "1.0.0", sent
        assert sent[1]["agent"]["sha256"] == old.package.sha256
        chunks = reader.retained(f"edgeloop/models/_agent/{old.package.sha256}/+")
        assert [m.payload for m in chunks] == [old.path.read_bytes()]
    finally:
        reader.close()
        client.close()
        db.close()
