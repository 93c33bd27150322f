"""Agent-side Ed25519 verification of model artifacts."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop_agent.wire.signature import (
    SignatureError,
    decode_signature,
    key_id,
    load_public_keys,
    verify,
)

ARTIFACT = b"\x08\x07\x12\x07skl2onnx" + bytes(range(256)) * 4


def _write_public(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def _sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keys(signer: Ed25519PrivateKey, tmp_path: Path) -> list:
    return load_public_keys([_write_public(signer, tmp_path / "signing.pub")])


def test_roundtrip(signer: Ed25519PrivateKey, keys: list) -> None:
    verify(ARTIFACT, _sign(signer, ARTIFACT), keys)


def test_one_flipped_byte_is_rejected(signer: Ed25519PrivateKey, keys: list) -> None:
    signature = _sign(signer, ARTIFACT)
    tampered = bytearray(ARTIFACT)
    tampered[100] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        verify(bytes(tampered), signature, keys)
    with pytest.raises(SignatureError, match="does not match"):
        verify(ARTIFACT + b"\x00", signature, keys)


def test_wrong_key_is_rejected(signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    other = load_public_keys([_write_public(Ed25519PrivateKey.generate(), tmp_path / "o.pub")])
    with pytest.raises(SignatureError, match="any of 1 trusted key"):
        verify(ARTIFACT, _sign(signer, ARTIFACT), other)


def test_any_trusted_key_may_match(signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    # Key rollover: the old and the new key are trusted side by side.
    old = _write_public(Ed25519PrivateKey.generate(), tmp_path / "old.pub")
    new = _write_public(signer, tmp_path / "new.pub")
    verify(ARTIFACT, _sign(signer, ARTIFACT), load_public_keys([old, new]))


@pytest.mark.parametrize("missing", [None, "", "   \n"])
def test_missing_signature_is_rejected(keys: list, missing: str | None) -> None:
    with pytest.raises(SignatureError, match="no signature"):
        verify(ARTIFACT, missing, keys)


@pytest.mark.parametrize(
    ("garbled", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        ("QUJDR", "not valid base64"),
        (base64.b64encode(b"x" * 63).decode(), "63 bytes long"),
        (base64.b64encode(b"x" * 65).decode(), "65 bytes long"),
    ],
)
def test_garbled_signature_is_rejected(keys: list, garbled: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(ARTIFACT, garbled, keys)


def test_signature_of_wrong_type_is_rejected(keys: list) -> None:
    with pytest.raises(SignatureError, match="base64 text, got bytes"):
        verify(ARTIFACT, b"abc", keys)  # type: ignore[arg-type]


def test_wrapped_base64_is_accepted(signer: Ed25519PrivateKey, keys: list) -> None:
    signature = _sign(signer, ARTIFACT)
    verify(ARTIFACT, signature[:40] + "\n" + signature[40:], keys)
    assert len(decode_signature(signature)) == 64


def test_no_keys_is_an_error(signer: Ed25519PrivateKey) -> None:
    with pytest.raises(SignatureError, match="no trusted public keys"):
        verify(ARTIFACT, _sign(signer, ARTIFACT), [])
    with pytest.raises(SignatureError, match="no public key files"):
        load_public_keys([])


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=r"nope\.pub does not exist"):
        load_public_keys([tmp_path / "nope.pub"])


def test_malformed_key_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SignatureError, match=r"bad\.pub is not a PEM public key"):
        load_public_keys([bad])
    bad.write_bytes(b"\x00\x01binary")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_keys([bad])


def test_private_key_file_is_refused(signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(
        signer.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SignatureError, match="holds a private key"):
        load_public_keys([path])


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pub"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        load_public_keys([path])


def test_key_id_is_stable(signer: Ed25519PrivateKey, keys: list) -> None:
    assert key_id(keys[0]) == key_id(signer.public_key())
    assert len(key_id(keys[0])) == 16


def test_import_does_not_load_cryptography() -> None:
    # The agent imports this module at start-up; cryptography is loaded on first use.
    code = (
        "import sys, edgeloop_agent.wire.signature as s; "
        "print(any(m.startswith('cryptography') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
