"""Enrolment end to end: identity issued, installed on the device, used, revoked.

A real Mosquitto runs the shipped configuration with the enrolment listener
(require_certificate, use_identity_as_username, crlfile) and the ACL the control node
writes; ``enrol()`` issues identities and bundles, the real ``edgeloop-agent enroll``
installs a bundle, the real agent runs from the config it wrote and serves a signed
model, and ``edgeloop fleet revoke`` (the real CLI) takes the identity away.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeloop_agent.wire.bundle import EnrolmentBundle
from edgeloop_control.fleet.enrolment import enrol, identities
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.signing import load_signing_key
from tests.integration.enrolled import CONTROL_PASSWORD, EnrolledSite, TLSClient
from tests.integration.models import sample_features, sensor_model
from tests.integration.signed import envelope
from tests.mqtt_helpers import VENV_BIN, AgentProcess, Probe

NOT_AUTHORIZED = 0x87
OK = (0x00, 0x10)  # success, or success with no subscriber


@pytest.fixture
def cert_site(tmp_path: Path) -> Iterator[EnrolledSite]:
    site = EnrolledSite(tmp_path).start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def password_site(tmp_path: Path) -> Iterator[EnrolledSite]:
    site = EnrolledSite(tmp_path, plain_devices=True).start()
    try:
        yield site
    finally:
        site.stop()


def run_enroll(bundle: Path, etc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "edgeloop-agent"), "enroll", str(bundle), "--etc", str(etc), "--no-enable"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def control_probe(site: EnrolledSite) -> Probe:
    return Probe(
        f"mqtt://127.0.0.1:{site.port}", username="edgeloop-control", password=CONTROL_PASSWORD
    )


def start_enrolled_agent(agents: list[AgentProcess], etc: Path, tmp_path: Path, device: str):
    """The agent exactly as the unit runs it: only --config and --state-dir."""
    agent = AgentProcess(
        broker_url="unused", device_id=device, state_dir=tmp_path / f"state-{device}"
    )
    agent.args = [
        str(VENV_BIN / "edgeloop-agent"),
        "--config",
        str(etc / "agent.toml"),
        "--state-dir",
        str(agent.state_dir),
        "--telemetry-interval",
        "1",
    ]
    agents.append(agent.start())
    return agent


def deploy_signed(site: EnrolledSite, control: Probe, device: str) -> None:
    """A signed model and desired state, as the control node publishes them."""
    model = sensor_model("v1")
    key = load_signing_key(site.ws.signing_key_path)
    control.publish(f"edgeloop/models/{model.name}/{model.version}", model.data, retain=True)
    control.publish(
        f"edgeloop/{device}/desired", envelope(device, 1, [model.entry()], [key]), retain=True
    )


def serves(control: Probe, device: str) -> dict[str, Any]:
    control.subscribe(f"edgeloop/{device}/status")
    control.subscribe(f"edgeloop/{device}/predictions")
    control.wait_for(f"edgeloop/{device}/status", lambda s: s.get("revision") == 1, timeout=60)
    control.publish(f"edgeloop/{device}/predict", {"id": "r1", "features": sample_features(1)[0]})
    return control.wait_for(f"edgeloop/{device}/predictions", lambda r: r.get("id") == "r1")


def files_of(bundle: EnrolmentBundle, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in (
        ("ca.crt", bundle.ca_cert),
        ("client.crt", bundle.client_cert),
        ("client.key", bundle.client_key),
    ):
        (directory / name).write_text(text)
        out[name] = directory / name
    return out


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_certificate_identity_serves_is_confined_and_revoked(cert_site, agents, tmp_path):
    site = cert_site
    db = ControlDB(site.ws.control_db)
    control = control_probe(site)
    clients: list[TLSClient] = []
    try:
        # d1 through the CLI (`edgeloop fleet add --identity`), d2 through the function.
        added = subprocess.run(
            [
                str(VENV_BIN / "edgeloop"),
                "-w",
                str(site.ws.root),
                "fleet",
                "add",
                "d1",
                "--identity",
                "certificate",
                "--bundle",
                str(tmp_path / "d1.bundle"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert added.returncode == 0, added.stderr
        out = json.loads(added.stdout)
        assert out["added"] == ["d1"] and out["enrolled"][0]["method"] == "certificate"
        b1 = identities(db)["d1"]
        b1_bundle = Path(out["enrolled"][0]["bundle"])
        assert b1_bundle == tmp_path / "d1.bundle"
        b2 = enrol(site.ws, db, "d2", method="certificate", bundle=tmp_path / "d2.bundle")
        assert b1.state == "enrolled"
        assert mode(b1_bundle) == 0o600 and mode(b2.bundle) == 0o600
        assert mode(site.ws.root / "ca" / "ca.key") == 0o600

        # The device side: install the bundle, run the agent from what it wrote.
        etc = tmp_path / "etc-d1"
        done = run_enroll(b1_bundle, etc)
        assert done.returncode == 0, done.stderr
        assert mode(etc / "agent.toml") == 0o600 and mode(etc / "client.key") == 0o600
        assert mode(etc / "client.crt") == 0o644 and mode(etc / "signing.pub") == 0o644
        agent = start_enrolled_agent(agents, etc, tmp_path, "d1")
        deploy_signed(site, control, "d1")
        reply = serves(control, "d1")
        assert "prediction" in reply, reply
        assert "u'd1'" in site.log()  # the broker named it by its certificate's CN

        # No certificate, or one from another CA: refused at the handshake.
        ca_only = {
            "ca_file": _tls(EnrolmentBundle.from_bytes(b1_bundle.read_bytes()), tmp_path)["ca_file"]
        }
        for kw in (ca_only, {**ca_only, **_foreign(tmp_path)}):
            stranger = TLSClient(site, **kw)
            clients.append(stranger)
            assert not stranger.accepted

        # Another device's certificate: its own topics only.
        d2 = TLSClient(site, **_tls(EnrolmentBundle.from_bytes(b2.bundle.read_bytes()), tmp_path))
        clients.append(d2)
        assert d2.accepted, site.log()[-2000:]
        assert d2.publish("edgeloop/d2/status", b"{}") in OK
        for topic in ("edgeloop/d1/status", "edgeloop/d1/predictions", "edgeloop/d1/desired"):
            assert d2.publish(topic, b"FORGED") == NOT_AUTHORIZED, topic
        assert d2.publish("edgeloop/models/sensor/v9", b"FORGED") == NOT_AUTHORIZED

        # Revoke through the CLI: CRL, ACL section gone, broker reloaded.
        revoked = subprocess.run(
            [str(VENV_BIN / "edgeloop"), "-w", str(site.ws.root), "fleet", "revoke", "d1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoked.returncode == 0, revoked.stderr
        agent.stop()
        d1_files = _tls(EnrolmentBundle.from_bytes(b1_bundle.read_bytes()), tmp_path / "d1")
        deadline = time.monotonic() + 10
        while True:  # the reload is asynchronous to the signal
            again = TLSClient(site, **d1_files)
            clients.append(again)
            if not again.accepted:
                break
            assert time.monotonic() < deadline, "the revoked certificate still connects"
            time.sleep(0.2)
        assert "certificate verify failed" in site.log()
        # The other device is untouched.
        d2_again = TLSClient(
            site, **_tls(EnrolmentBundle.from_bytes(b2.bundle.read_bytes()), tmp_path)
        )
        clients.append(d2_again)
        assert d2_again.accepted
        # The fleet shows it revoked.
        assert identities(db)["d1"].state == "revoked"
        assert identities(db)["d2"].state == "enrolled"
        listed = subprocess.run(
            [str(VENV_BIN / "edgeloop"), "-w", str(site.ws.root), "fleet", "identities", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        states = {r["device"]: r["state"] for r in json.loads(listed.stdout)}
        assert states == {"d1": "revoked", "d2": "enrolled"}
        assert [e["subject"] for e in db.events(kind="device_revoked")] == ["d1"]
        fleet = subprocess.run(
            [str(VENV_BIN / "edgeloop"), "-w", str(site.ws.root), "fleet", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fleet.returncode == 0, fleet.stderr
        shown = {r["device"]: r["identity"] for r in json.loads(fleet.stdout)}
        assert shown["d1"] == "revoked" and shown["d2"] == "enrolled", shown
    finally:
        for c in clients:
            c.close()
        control.close()
        db.close()


def test_a_connected_device_loses_its_topics_at_revocation(cert_site, tmp_path):
    """A reload does not drop connections: the per-device ACL section is what stops a
    revoked device that is still connected (a `pattern` line would keep granting it)."""
    site = cert_site
    db = ControlDB(site.ws.control_db)
    try:
        result = enrol(site.ws, db, "d1", method="certificate", bundle=tmp_path / "d1.bundle")
        d1 = TLSClient(
            site, **_tls(EnrolmentBundle.from_bytes(result.bundle.read_bytes()), tmp_path)
        )
        try:
            assert d1.publish("edgeloop/d1/telemetry", b"{}") in OK
            from edgeloop_control.fleet.enrolment import revoke

            revoke(site.ws, db, "d1")
            deadline = time.monotonic() + 10
            while d1.publish("edgeloop/d1/telemetry", b"{}") != NOT_AUTHORIZED:
                assert time.monotonic() < deadline, "a revoked device still publishes"
                time.sleep(0.2)
        finally:
            d1.close()
    finally:
        db.close()


def test_password_identity_serves_is_confined_and_revoked(password_site, agents, tmp_path):
    site = password_site
    db = ControlDB(site.ws.control_db)
    control = control_probe(site)
    probes: list[Probe] = []
    try:
        b3 = enrol(site.ws, db, "d3", method="password", bundle=tmp_path / "d3.bundle")
        b4 = enrol(site.ws, db, "d4", method="password", bundle=tmp_path / "d4.bundle")
        assert mode(b3.bundle) == 0o600
        assert "d3:" in site.passwd.read_text()  # written by mosquitto_passwd
        etc = tmp_path / "etc-d3"
        done = run_enroll(b3.bundle, etc)
        assert done.returncode == 0, done.stderr
        assert mode(etc / "broker.password") == 0o600
        # The password is in its own file, never in agent.toml.
        secret = EnrolmentBundle.from_bytes(b3.bundle.read_bytes()).password
        assert secret not in (etc / "agent.toml").read_text()
        agent = start_enrolled_agent(agents, etc, tmp_path, "d3")
        deploy_signed(site, control, "d3")
        assert "prediction" in serves(control, "d3")

        d4_password = EnrolmentBundle.from_bytes(b4.bundle.read_bytes()).password
        d4 = Probe(site.url, username="d4", password=d4_password)
        probes.append(d4)
        # d4's own password works on its own topics, not on d3's: the control node,
        # subscribed to d3's predictions, never sees the forgery.
        d4.client.publish("edgeloop/d4/status", b"{}", qos=1).wait_for_publish(10)
        d4.client.publish("edgeloop/d3/predictions", b"FORGED", qos=1).wait_for_publish(10)
        d4.client.publish("edgeloop/d3/status", b"FORGED", qos=1).wait_for_publish(10)
        seen = []
        with contextlib.suppress(TimeoutError, queue.Empty):
            while True:
                seen.append(control.next(timeout=1.5).payload)
        assert b"FORGED" not in seen
        assert "Denied PUBLISH from" in site.log()

        from edgeloop_control.fleet.enrolment import revoke

        revoke(site.ws, db, "d3")
        agent.stop()
        assert "d3:" not in site.passwd.read_text()
        deadline = time.monotonic() + 10
        while True:
            again = Probe(site.url, username="d3", password=secret, require_accept=False)
            probes.append(again)
            if not again.accepted:
                break
            assert time.monotonic() < deadline, "the revoked password still connects"
            time.sleep(0.2)
        assert identities(db)["d3"].state == "revoked"
    finally:
        for p in probes:
            p.close()
        control.close()
        db.close()


def _foreign(tmp_path: Path) -> dict[str, Any]:
    """A client certificate with a fleet device's CN, signed by another CA."""
    from edgeloop_control.infra.ca import CertificateAuthority

    other = CertificateAuthority(tmp_path / "other-ca").issue_client("d1")
    cert, key = tmp_path / "foreign.crt", tmp_path / "foreign.key"
    cert.write_text(other.cert_pem)
    key.write_text(other.key_pem)
    return {"cert": cert, "key": key}


def _tls(bundle: EnrolmentBundle, directory: Path) -> dict[str, Any]:
    files = files_of(bundle, directory / f"probe-{bundle.device_id}")
    return {"ca_file": files["ca.crt"], "cert": files["client.crt"], "key": files["client.key"]}


def test_enroll_refuses_tampered_and_partial_bundles_in_one_line(tmp_path: Path):
    site = EnrolledSite(tmp_path)  # its workspace and CA only: no broker needed here
    with (site.ws.root / "edgeloop.toml").open() as fh:
        config = fh.read()
    # No broker to reload in this test: the reload is `true`.
    config = config.replace(f'broker_pid_file = "{site.pid_file}"', 'reload_command = ["true"]')
    (site.ws.root / "edgeloop.toml").write_text(config)
    from edgeloop_control.infra.workspace import Workspace

    ws = Workspace.open(site.ws.root)
    db = ControlDB(ws.control_db)
    try:
        bundle = enrol(ws, db, "d1", method="certificate", bundle=tmp_path / "d1.bundle").bundle
    finally:
        db.close()
    raw = bundle.read_bytes()
    doc = json.loads(raw)
    tampered = dict(doc, broker="mqtts://evil.example:8883")
    missing = {k: v for k, v in doc.items() if k != "client_key"}
    cases = {
        "truncated": raw[: len(raw) // 2],
        "tampered": json.dumps(tampered).encode(),
        "partial": json.dumps(missing).encode(),
        "empty": b"",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.bundle"
        path.write_bytes(content)
        os.chmod(path, 0o600)
        etc = tmp_path / f"etc-{name}"
        done = run_enroll(path, etc)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "refused" in lines[0], (name, done.stderr)
        assert "Traceback" not in done.stderr
        assert not etc.exists(), f"{name}: files were written from a refused bundle"
    assert "altered" in run_enroll(tmp_path / "tampered.bundle", tmp_path / "x").stderr
    assert "client_key" in run_enroll(tmp_path / "partial.bundle", tmp_path / "x").stderr
    # The genuine bundle installs.
    done = run_enroll(bundle, tmp_path / "etc-ok")
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "etc-ok" / "agent.toml").read_text()
    assert 'cert_file = "client.crt"' in written and 'device_id = "d1"' in written
