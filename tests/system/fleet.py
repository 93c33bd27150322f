"""Enrolment and deployment as the system tests do them, each in ONE place.

Enrolment (certificates, `edgeloop fleet add`) and the signed desired-state
document are being built elsewhere; when they land, only these two functions
should need to change.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop_control.infra.signing import load_signing_key
from tests.integration.models import Artifact
from tests.integration.signed import envelope
from tests.mqtt_helpers import Probe

TRUSTED_KEY = "/etc/edgeloop/signing.pub"


def enrolment_files(
    broker_url: str, device_id: str, public_key: Path, *, telemetry_interval_s: float = 10.0
) -> dict[str, tuple[bytes, int]]:
    """What an enrolment bundle writes on the device: path -> (content, mode)."""
    config = (
        f'device_id = "{device_id}"\n'
        f'broker = "{broker_url}"\n'
        f'trusted_keys = ["{TRUSTED_KEY}"]\n'
        "require_signature = true\n"
        f"telemetry_interval_s = {telemetry_interval_s}\n"
    )
    return {
        "/etc/edgeloop/agent.toml": (config.encode(), 0o600),
        TRUSTED_KEY: (public_key.read_bytes(), 0o644),
    }


def deploy_signed(
    probe: Probe, device: str, revision: int, artifact: Artifact, signing_key: Path
) -> None:
    """Publishes `artifact` and the device's desired state, both signed the way the
    control node signs them (the document whole, the artifact as a statement)."""
    key = load_signing_key(signing_key)
    probe.publish(f"edgeloop/models/{artifact.name}/{artifact.version}", artifact.data, retain=True)
    entry = artifact.entry()
    entry["signature"] = None  # envelope() signs the statement {name, version, sha256, size}
    probe.publish(
        f"edgeloop/{device}/desired", envelope(device, revision, [entry], [key]), retain=True
    )
