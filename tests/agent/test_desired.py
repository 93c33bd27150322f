"""The agent's desired-state parser and envelope check, in process (no broker)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop_agent.wire.desired import DesiredState, DesiredStateError, open_envelope
from edgeloop_agent.wire.signature import artifact_statement, verify_any
from edgeloop_control.infra.signing import DesiredSigner, open_desired, sign_desired
from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.refs import check_name, check_stage, parse_ref

SHA = "ab" * 32
ENTRY = {"name": "m", "version": "v1", "sha256": SHA, "size": 10}


def doc(**models_override: object) -> dict:
    return {"revision": 3, "models": [{**ENTRY, **models_override}]}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"weight": 10**400}, "weight"),
        ({"weight": float("inf")}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"variant": "\ud800"}, "variant"),
        ({"variant": "a\nb"}, "variant"),
        ({"name": "m\n"}, "name"),
        ({"version": "v1\n"}, "version"),
        ({"sha256": SHA + "\n"}, "sha256"),
        ({"size": 2**64}, "size"),
        ({"signature": "x" * 5000}, "signature"),
    ],
)
def test_hostile_fields_are_refused_with_a_message(override: dict, needle: str) -> None:
    with pytest.raises(DesiredStateError, match=needle) as info:
        DesiredState.from_dict(doc(**override))
    assert info.value.code == "invalid_desired_state"


def test_deep_nesting_and_bad_bytes_are_desired_state_errors() -> None:
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"\xff", b'{"revision": 1e999}'):
        with pytest.raises(DesiredStateError):
            DesiredState.from_payload(raw)


def test_huge_revision_and_bad_expiry_are_refused() -> None:
    with pytest.raises(DesiredStateError, match="revision"):
        DesiredState.from_dict({**doc(), "revision": 2**63})
    with pytest.raises(DesiredStateError, match="expires"):
        DesiredState.from_dict({**doc(), "expires": float("inf")})
    with pytest.raises(DesiredStateError, match="device"):
        DesiredState.from_dict({**doc(), "device": "d\n"})


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_envelope_round_trip_verifies_exact_bytes(key: Ed25519PrivateKey) -> None:
    raw = sign_desired({**doc(), "device": "d1", "expires": time.time() + 60}, [key])
    opened = open_envelope(raw, keys=[key.public_key()], allow_unsigned=False)
    assert opened.keyid is not None
    assert DesiredState.from_payload(opened.payload).device == "d1"
    # One byte of the payload changed: refused, whatever the keyid says.
    env = json.loads(raw)
    payload = bytearray(base64.b64decode(env["payload"]))
    payload[payload.index(b"3")] = ord("4")
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    with pytest.raises(DesiredStateError) as info:
        open_envelope(json.dumps(env).encode(), keys=[key.public_key()], allow_unsigned=False)
    assert info.value.code == "desired_signature_invalid"


def test_unsigned_needs_allow_unsigned_and_no_key(key: Ed25519PrivateKey) -> None:
    plain = json.dumps(doc()).encode()
    for keys, allow in (([], False), ([key.public_key()], True), ([key.public_key()], False)):
        with pytest.raises(DesiredStateError) as info:
            open_envelope(plain, keys=keys, allow_unsigned=allow)
        assert info.value.code == "desired_unsigned"
    assert open_envelope(plain, keys=[], allow_unsigned=True).keyid is None


def test_oversize_message_is_refused_before_parsing() -> None:
    with pytest.raises(DesiredStateError) as info:
        open_envelope(b"{" * 1000, keys=[], allow_unsigned=True, max_bytes=999)
    assert info.value.code == "desired_too_large"


def test_signer_seals_for_one_device_with_bound_artifact_statements(
    key: Ed25519PrivateKey,
) -> None:
    signer = DesiredSigner([key], ttl_s=3600)
    now = time.time()
    sealed, raw = signer.seal("d1", doc(), now)
    assert sealed["device"] == "d1" and now < sealed["expires"] <= now + 3600
    assert open_desired(raw) == sealed
    sig = sealed["models"][0]["signature"]
    verify_any(artifact_statement("m", "v1", SHA, 10), [(None, sig)], [key.public_key()])
    with pytest.raises(Exception, match="no signature matches"):
        verify_any(artifact_statement("other", "v999", SHA, 10), [(None, sig)], [key.public_key()])
    # An idempotent retry publishes the very same bytes.
    assert signer.seal("d1", sealed, now + 60)[1] == raw


@pytest.mark.parametrize("bad", ["m\n", "m\n\n", "m\r"])
def test_registry_names_and_stages_are_matched_whole(bad: str) -> None:
    with pytest.raises(RegistryError):
        check_name(bad)
    with pytest.raises(RegistryError):
        check_stage(bad)
    with pytest.raises(RegistryError):
        parse_ref(f"{bad}@v1")
