"""Control-node key management and signing, checked with the agent's verifier."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeloop_agent.wire.signature import SignatureError, load_public_keys, verify
from edgeloop_control.infra.signing import (
    SigningError,
    ensure_keypair,
    generate_keypair,
    key_id,
    load_public_key,
    load_signing_key,
    sign,
)

DATA = b"onnx model bytes" * 100


def test_generate_keypair_writes_pem_files_with_safe_modes(tmp_path: Path) -> None:
    priv, pub = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    key = generate_keypair(priv, pub)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    loaded = serialization.load_pem_public_key(pub.read_bytes())
    assert isinstance(loaded, Ed25519PublicKey)
    assert key_id(loaded) == key_id(key.public_key())
    assert not list(priv.parent.glob("*.tmp"))


def test_generate_keypair_refuses_to_replace_keys(tmp_path: Path) -> None:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    first = generate_keypair(priv, pub)
    with pytest.raises(SigningError, match="already exists"):
        generate_keypair(priv, pub)
    assert key_id(load_signing_key(priv).public_key()) == key_id(first.public_key())
    second = generate_keypair(priv, pub, overwrite=True)
    assert key_id(load_public_key(pub)) == key_id(second.public_key())


def test_sign_verify_roundtrip_with_agent_verifier(tmp_path: Path) -> None:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    generate_keypair(priv, pub)
    signature = sign(DATA, load_signing_key(priv))
    assert len(base64.b64decode(signature)) == 64
    keys = load_public_keys([pub])
    verify(DATA, signature, keys)
    with pytest.raises(SignatureError):
        verify(DATA[:-1] + b"?", signature, keys)


def test_signing_is_deterministic(tmp_path: Path) -> None:
    # Ed25519 signatures are deterministic: re-signing an artifact gives the same value.
    key = generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    assert sign(DATA, key) == sign(bytearray(DATA), key)


def test_sign_refuses_non_bytes(tmp_path: Path) -> None:
    key = generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    with pytest.raises(SigningError, match="got str"):
        sign("text", key)  # type: ignore[arg-type]


def test_ensure_keypair_creates_then_reuses(tmp_path: Path) -> None:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    first = ensure_keypair(priv, pub)
    again = ensure_keypair(priv, pub)
    assert key_id(first.public_key()) == key_id(again.public_key())


def test_ensure_keypair_rederives_a_lost_public_key(tmp_path: Path) -> None:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    key = ensure_keypair(priv, pub)
    pub.unlink()
    ensure_keypair(priv, pub)
    assert key_id(load_public_key(pub)) == key_id(key.public_key())


def test_ensure_keypair_will_not_rekey_behind_agents_backs(tmp_path: Path) -> None:
    priv, pub = tmp_path / "signing.key", tmp_path / "signing.pub"
    ensure_keypair(priv, pub)
    priv.unlink()
    with pytest.raises(SigningError, match=r"private key .* is missing"):
        ensure_keypair(priv, pub)


def test_load_signing_key_errors(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="does not exist"):
        load_signing_key(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello")
    with pytest.raises(SigningError, match="not a PEM private key"):
        load_signing_key(garbage)
    key = generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(SigningError, match="encrypted"):
        load_signing_key(encrypted)


def test_load_public_key_errors(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="cannot read public key"):
        load_public_key(tmp_path / "missing.pub")
    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    with pytest.raises(SigningError, match="holds a private key"):
        load_public_key(tmp_path / "k")
