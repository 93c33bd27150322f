"""The CA, the CRL and the broker files enrolment writes, checked with real tools.

``openssl verify`` (OpenSSL, what Mosquitto itself uses) judges the certificates and
the CRL; ``mosquitto_passwd`` writes the password file. The broker itself is in
tests/integration/test_enrolment.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from edgeloop_agent.wire.bundle import EnrolmentBundle
from edgeloop_control.errors import ConfigError, EdgeloopError
from edgeloop_control.fleet.enrolment import (
    BEGIN,
    END,
    EnrolmentError,
    enrol,
    identities,
    revoke,
)
from edgeloop_control.infra.ca import CAError, CertificateAuthority
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.signing import ensure_keypair
from edgeloop_control.infra.workspace import Workspace

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


def openssl_verify(ca: CertificateAuthority, cert_pem: str, tmp: Path, crl: bool) -> bool:
    cert = tmp / "c.pem"
    cert.write_text(cert_pem)
    args = ["openssl", "verify", "-CAfile", str(ca.cert_path)]
    if crl:
        args += ["-crl_check", "-CRLfile", str(ca.crl_path)]
    done = subprocess.run([*args, str(cert)], capture_output=True, text=True)
    return done.returncode == 0


def test_ca_issues_client_certs_openssl_accepts_until_revoked(tmp_path: Path):
    ca = CertificateAuthority(tmp_path / "ca")
    assert (ca.key_path.stat().st_mode & 0o777) == 0o600
    assert (ca.directory.stat().st_mode & 0o777) == 0o700
    issued = ca.issue_client("pump-1")
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert cert.subject.rfc4514_string() == "CN=pump-1"
    assert openssl_verify(ca, issued.cert_pem, tmp_path, crl=True)
    other = ca.issue_client("pump-2")
    ca.revoke(issued.serial)
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert not openssl_verify(ca, issued.cert_pem, tmp_path, crl=True)
    assert openssl_verify(ca, other.cert_pem, tmp_path, crl=True)
    # Reopened from disk: same CA, the revocation kept.
    again = CertificateAuthority(tmp_path / "ca")
    assert again.cert_pem == ca.cert_pem and issued.serial in again.revoked()


def test_a_ca_key_readable_by_others_is_refused(tmp_path: Path):
    ca = CertificateAuthority(tmp_path / "ca")
    ca.key_path.chmod(0o644)
    with pytest.raises(CAError, match="readable by others") as err:
        CertificateAuthority(tmp_path / "ca")
    assert isinstance(err.value, EdgeloopError)


def workspace(tmp_path: Path, **enrolment: str) -> Workspace:
    ws = Workspace.init(tmp_path / "ws", broker="mqtts://broker.example:8883")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    settings = {"reload_command": '["true"]', **enrolment}
    with (ws.root / "edgeloop.toml").open("a") as fh:
        fh.write("\n[enrolment]\n")
        for key, value in settings.items():
            fh.write(f"{key} = {value}\n")
    return Workspace.open(ws.root)


def test_enrol_writes_acl_sections_and_revoke_removes_them(tmp_path: Path):
    ws = workspace(tmp_path)
    db = ControlDB(ws.control_db)
    try:
        r1 = enrol(ws, db, "pump-1", method="certificate", bundle=tmp_path / "p1.bundle")
        enrol(ws, db, "pump-2", method="password", bundle=tmp_path / "p2.bundle")
        acl = (ws.root / "broker" / "edgeloop.acl").read_text()
        block = acl[acl.index(BEGIN) : acl.index(END)]
        assert "user pump-1\n" in block and "user pump-2\n" in block
        assert "topic write edgeloop/pump-1/status" in block
        assert "topic read edgeloop/pump-1/desired" in block
        assert "topic write edgeloop/pump-1/desired" not in block
        assert "pattern" not in block
        assert r1.broker == "mqtts://broker.example:8883"
        bundle = EnrolmentBundle.from_bytes(r1.bundle.read_bytes())
        assert bundle.trusted_keys == [ws.public_key_path.read_text()]
        assert bundle.ca_cert == (ws.root / "ca" / "ca.crt").read_text()

        with pytest.raises(EnrolmentError, match="already enrolled"):
            enrol(ws, db, "pump-1", method="certificate", bundle=tmp_path / "again.bundle")
        revoke(ws, db, "pump-1")
        acl = (ws.root / "broker" / "edgeloop.acl").read_text()
        assert "user pump-1\n" not in acl and "user pump-2\n" in acl
        revoke(ws, db, "pump-2")
        assert "pump-2:" not in (ws.root / "broker" / "edgeloop.passwd").read_text()
        with pytest.raises(EnrolmentError, match="already revoked"):
            revoke(ws, db, "pump-1")
        with pytest.raises(EnrolmentError, match="no identity"):
            revoke(ws, db, "pump-9")
        # Re-enrolled after revocation: a new certificate, the old serial stays revoked.
        r1b = enrol(ws, db, "pump-1", method="certificate", bundle=tmp_path / "p1b.bundle")
        assert r1b.serial != r1.serial
        assert int(str(r1.serial), 16) in CertificateAuthority(ws.root / "ca").revoked()
        assert identities(db)["pump-1"].state == "enrolled"
        assert identities(db)["pump-2"].state == "revoked"
        assert db.device("pump-1") is not None  # in the inventory
    finally:
        db.close()


def test_operator_lines_outside_the_managed_block_survive(tmp_path: Path):
    acl = tmp_path / "edgeloop.acl"
    acl.write_text(f"user app-dashboard\ntopic read edgeloop/+/status\n\n{BEGIN}\n{END}\n# mine\n")
    ws = workspace(tmp_path, acl_file=f'"{acl}"')
    db = ControlDB(ws.control_db)
    try:
        enrol(ws, db, "pump-1", method="password", bundle=tmp_path / "p1.bundle")
        text = acl.read_text()
        assert text.startswith("user app-dashboard\ntopic read edgeloop/+/status\n")
        assert text.endswith(f"{END}\n# mine\n") and "user pump-1" in text
        acl.write_text("user app-dashboard\n")  # the markers removed by hand
        with pytest.raises(EnrolmentError, match="no '# BEGIN edgeloop"):
            enrol(ws, db, "pump-2", method="password", bundle=tmp_path / "p2.bundle")
    finally:
        db.close()


def test_refusals_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ws = workspace(tmp_path, reload_command='["false"]')
    db = ControlDB(ws.control_db)
    try:
        with pytest.raises(EnrolmentError, match="`false` failed"):
            enrol(ws, db, "pump-1", method="password", bundle=tmp_path / "p.bundle")
        with pytest.raises(EnrolmentError, match="models"):
            enrol(ws, db, "models", method="password", bundle=tmp_path / "m.bundle")
        with pytest.raises(EnrolmentError, match="is not certificate or password"):
            enrol(ws, db, "pump-3", method="psk", bundle=tmp_path / "m.bundle")
        with pytest.raises(EnrolmentError, match="does not exist"):
            enrol(ws, db, "pump-3", method="password", bundle=tmp_path / "no" / "x")
    finally:
        db.close()
    # Each workspace below on its own (empty) SQLite control database, whatever the run's
    # engine: one test, several workspaces.
    monkeypatch.delenv("EDGELOOP_CONTROL_DB", raising=False)
    plain = Workspace.init(tmp_path / "plain", broker="mqtt://127.0.0.1:1883")
    ensure_keypair(plain.signing_key_path, plain.public_key_path)
    db = ControlDB(plain.control_db)
    try:
        with pytest.raises(EnrolmentError, match="needs a TLS broker"):
            enrol(plain, db, "pump-1", method="certificate", bundle=tmp_path / "p.bundle")
    finally:
        db.close()
    nokey = workspace(tmp_path / "nokey")
    nokey.public_key_path.unlink()
    db = ControlDB(nokey.control_db)
    try:
        with pytest.raises(EnrolmentError, match="signing public key"):
            enrol(nokey, db, "pump-1", method="password", bundle=tmp_path / "p.bundle")
        assert not (nokey.root / "broker" / "edgeloop.passwd").exists()  # nothing half-done
        assert identities(db) == {}
    finally:
        db.close()
    bad = workspace(tmp_path / "bad", colour='"blue"')
    db = ControlDB(bad.control_db)
    try:
        with pytest.raises(ConfigError, match="unknown settings colour"):
            enrol(bad, db, "pump-1", method="password", bundle=tmp_path / "p.bundle")
    finally:
        db.close()


def test_the_bundle_is_0600_and_names_no_credentials_in_its_url(tmp_path: Path):
    ws = workspace(tmp_path, password_broker_url='"mqtts://u:p@broker.example:8884"')
    db = ControlDB(ws.control_db)
    try:
        path = enrol(ws, db, "pump-1", method="password", bundle=tmp_path / "p.bundle").bundle
    finally:
        db.close()
    assert (path.stat().st_mode & 0o777) == 0o600
    doc = json.loads(path.read_bytes())
    # Password devices dial their own listener; credentials never ride in the URL.
    assert doc["broker"] == "mqtts://broker.example:8884" and doc["username"] == "pump-1"
    assert len(doc["password"]) >= 24 and len(doc["sha256"]) == 64


def test_fleet_revoke_and_identities_on_the_cli(tmp_path: Path):
    from tests.mqtt_helpers import VENV_BIN

    ws = workspace(tmp_path)
    done = subprocess.run(
        [str(VENV_BIN / "edgeloop"), "-w", str(ws.root), "fleet", "revoke", "pump-9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: device pump-9 has no identity issued by this control node"

    result = subprocess.run(
        [str(VENV_BIN / "edgeloop"), "-w", str(ws.root), "fleet", "identities", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
