"""The enrolment bundle (edgeloop_agent.wire.bundle) and the agent config it becomes.

Real files and the real ``edgeloop-agent`` console script; the control node's side
and a real broker are in tests/control/test_enrolment_files.py and
tests/integration/test_enrolment.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.enroll import install
from edgeloop_agent.wire.bundle import BundleError, EnrolmentBundle
from edgeloop_agent.wire.network import tls_options
from edgeloop_control.infra.ca import CertificateAuthority
from edgeloop_control.infra.signing import ensure_keypair
from tests.mqtt_helpers import VENV_BIN


def make_bundle(tmp_path: Path, identity: str = "certificate") -> EnrolmentBundle:
    ca = CertificateAuthority(tmp_path / "ca")
    ensure_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    issued = ca.issue_client("pump-1")
    common = {
        "device_id": "pump-1",
        "identity": identity,
        "broker": "mqtts://broker.example:8883",
        "ca_cert": ca.cert_pem,
        "trusted_keys": [(tmp_path / "k.pub").read_text()],
    }
    if identity == "certificate":
        return EnrolmentBundle(**common, client_cert=issued.cert_pem, client_key=issued.key_pem)
    return EnrolmentBundle(**common, username="pump-1", password="s3cret-pw")


def test_bundle_round_trip_and_every_refusal(tmp_path: Path):
    bundle = make_bundle(tmp_path)
    raw = bundle.to_bytes()
    assert EnrolmentBundle.from_bytes(raw) == bundle
    doc = json.loads(raw)

    def refused(changed: dict[str, object], match: str, redigest: bool = True) -> None:
        body = {k: v for k, v in {**doc, **changed}.items() if v is not None}
        if redigest:  # a consistent digest: the field checks themselves must refuse
            body.pop("sha256")
            fields = EnrolmentBundle.__dataclass_fields__
            body = {k: v for k, v in body.items() if k in fields}
            from edgeloop_agent.wire.bundle import _digest

            body["sha256"] = _digest(body)
        with pytest.raises(BundleError, match=match):
            EnrolmentBundle.from_bytes(json.dumps(body).encode())

    refused({"broker": "mqtts://evil:8883"}, "altered", redigest=False)
    refused({"format": "other/1"}, "format")
    refused({"device_id": "a/b"}, "device id")
    refused({"broker": "mqtt://broker.example:1883"}, "needs an mqtts:// broker")
    refused({"broker": "mqtts://u:p@broker.example:8883"}, "must not carry credentials")
    refused({"client_key": doc["client_key"][:80]}, "client_key is not a PEM")
    refused({"trusted_keys": []}, "at least one public key")
    refused({"identity": "psk"}, 'identity "psk"')
    other = CertificateAuthority(tmp_path / "other").issue_client("pump-2")
    refused({"client_cert": other.cert_pem, "client_key": other.key_pem}, "not for device pump-1")
    refused({"client_key": other.key_pem}, "does not belong to client_cert")
    rsa_like = doc["ca_cert"].replace("CERTIFICATE", "PUBLIC KEY")  # a PEM, not an Ed25519 key
    refused({"trusted_keys": [rsa_like]}, "trusted_keys\\[0\\]")
    with pytest.raises(BundleError, match="not JSON"):
        EnrolmentBundle.from_bytes(raw[:-10])


def test_installed_config_resolves_its_files_next_to_itself(tmp_path: Path):
    etc = tmp_path / "etc"
    config = install(make_bundle(tmp_path), etc)
    assert config.cert_file == str(etc / "client.crt")
    assert config.trusted_keys == [etc / "signing.pub"]
    address = config.broker_address
    assert (address.cert_file, address.key_file) == (
        str(etc / "client.crt"),
        str(etc / "client.key"),
    )
    options = tls_options(address.ca_file, address.cert_file, address.key_file)
    assert options["certfile"] == str(etc / "client.crt")
    # The same config from another directory (the unit's credentials directory).
    moved = tmp_path / "credentials"
    moved.mkdir()
    for f in etc.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    assert AgentConfig.from_file(moved / "agent.toml").validate().ca_file == str(moved / "ca.crt")


def test_password_identity_reads_its_password_file(tmp_path: Path):
    etc = tmp_path / "etc"
    config = install(make_bundle(tmp_path, "password"), etc)
    address = config.broker_address
    assert (address.username, address.password) == ("pump-1", "s3cret-pw")
    assert "s3cret" not in (etc / "agent.toml").read_text()
    assert (etc / "broker.password").stat().st_mode & 0o777 == 0o600
    # Re-enrolled with a certificate: the old secret does not linger, and the previous
    # agent.toml (with whatever the operator added) is kept beside it, 0600.
    with (etc / "agent.toml").open("a") as fh:
        fh.write("capture_rate = 0.5\n")
    install(make_bundle(tmp_path / "again"), etc)
    assert not (etc / "broker.password").exists()
    assert "capture_rate = 0.5" in (etc / "agent.toml.bak").read_text()
    assert (etc / "agent.toml.bak").stat().st_mode & 0o777 == 0o600


def test_client_certificate_settings_are_checked(tmp_path: Path):
    crt = tmp_path / "c.crt"
    crt.write_text("x")
    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        AgentConfig(device_id="d", broker="mqtts://h:8883", cert_file=str(crt)).validate()
    with pytest.raises(ConfigError, match="not mqtts"):
        AgentConfig(
            device_id="d", broker="mqtt://h:1883", cert_file=str(crt), key_file=str(crt)
        ).validate()
    with pytest.raises(ConfigError, match="password_file"):
        AgentConfig(device_id="d", password_file=str(tmp_path / "missing")).validate()


def test_enroll_command_one_line_and_no_files_for_a_missing_bundle(tmp_path: Path):
    done = subprocess.run(
        [
            str(VENV_BIN / "edgeloop-agent"),
            "enroll",
            str(tmp_path / "nope"),
            "--etc",
            str(tmp_path / "etc"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cannot read bundle" in done.stderr
    assert not (tmp_path / "etc").exists()
    done = subprocess.run(
        [str(VENV_BIN / "edgeloop-agent"), "enroll", "/dev/zero", "--etc", str(tmp_path / "etc")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "more than a bundle" in done.stderr


def test_unit_dropin_loads_every_file_the_config_names(tmp_path: Path):
    """Under the unit the config is read from the credentials directory, so every file
    it names by relative path must be one the drop-in loads there."""
    import tomllib

    from edgeloop_agent.enroll import _files, systemd_dropin

    for identity in ("certificate", "password"):
        bundle = make_bundle(tmp_path / identity, identity)
        etc = tmp_path / identity / "etc"
        install(bundle, etc)
        names = sorted(_files(bundle))
        dropin = systemd_dropin(etc, names)
        loaded = {
            line.split("=", 1)[1].split(":", 1)[0]
            for line in dropin.splitlines()
            if line.startswith("LoadCredential=")
        }
        raw = tomllib.loads((etc / "agent.toml").read_text())
        named = {raw[k] for k in ("ca_file", "cert_file", "key_file", "password_file") if k in raw}
        named |= set(raw["trusted_keys"])
        assert named <= loaded, (identity, named - loaded)
        assert "agent.toml" in loaded  # --etc is not /etc/edgeloop: the unit's default is wrong
        assert f"LoadCredential=agent.toml:{etc / 'agent.toml'}" in dropin


def test_enroll_without_systemd_says_how_to_start(tmp_path: Path):
    bundle = tmp_path / "b.json"
    bundle.write_bytes(make_bundle(tmp_path).to_bytes())
    bundle.chmod(0o644)
    done = subprocess.run(
        [
            str(VENV_BIN / "edgeloop-agent"),
            "enroll",
            str(bundle),
            "--etc",
            str(tmp_path / "etc"),
            "--unit-dir",
            str(tmp_path / "units"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    if Path("/run/systemd/system").is_dir():
        pytest.skip("systemd runs here: enabling is tested in the booted container")
    assert "systemd is not running here" in done.stdout
    assert "readable by others" in done.stdout  # the 0644 bundle is warned about
    assert not (tmp_path / "units").exists()
