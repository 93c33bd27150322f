"""Ed25519 signing of model artifacts on the control node.

The private key never leaves the control node; agents get the public key and
check every artifact with ``edgeloop_agent.signature.verify``. Keys are PEM files:
PKCS8 for the private key (mode 0600), SubjectPublicKeyInfo for the public key.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgeloop_agent.signature import SignatureError, key_id, load_public_key_pem, verify
from edgeloop_agent.statedir import atomic_write

__all__ = [
    "SigningError",
    "ensure_keypair",
    "generate_keypair",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "sign",
    "verify",
]


class SigningError(Exception):
    """A signing key cannot be created, read or used."""


def generate_keypair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Ed25519PrivateKey:
    """Create a new key pair; refuses to replace existing files unless ``overwrite``."""
    private_path, public_path = Path(private_path), Path(public_path)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise SigningError(
                    f"{path} already exists; refusing to replace a signing key "
                    "(agents trust the old public key)"
                )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(private_path, pem)
    _write_public(public_path, key.public_key())
    return key


def ensure_keypair(
    private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]
) -> Ed25519PrivateKey:
    """Load the signing key, creating the pair on first use.

    A lost public key is re-derived from the private key. A public key without its
    private key is an error rather than a cue to generate a new pair: agents in the
    field trust that public key, and silently re-keying would make them reject
    every new model.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        key = load_signing_key(private_path)
        if not public_path.exists():
            _write_public(public_path, key.public_key())
        return key
    if public_path.exists():
        raise SigningError(
            f"public key {public_path} exists but its private key {private_path} is missing; "
            "restore the private key, or remove the public key to start a new key pair"
        )
    return generate_keypair(private_path, public_path)


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"signing key {path} does not exist") from None
    except OSError as exc:
        raise SigningError(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise SigningError(
            f"signing key {path} is encrypted; edgeloop needs an unencrypted PKCS8 key "
            "protected by file permissions"
        ) from None
    except ValueError as exc:
        raise SigningError(f"signing key {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"signing key {path} is a {type(key).__name__}, not Ed25519")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read public key {path}: {exc.strerror}") from None
    try:
        return load_public_key_pem(pem, source=f"public key {path}")
    except SignatureError as exc:
        raise SigningError(str(exc)) from None


def sign(data: bytes, key: Ed25519PrivateKey) -> str:
    """Base64 of the 64-byte Ed25519 signature over ``data`` (the raw ONNX bytes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SigningError(f"can only sign bytes, got {type(data).__name__}")
    return base64.b64encode(key.sign(bytes(data))).decode("ascii")


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, pem, mode=0o600)


def _write_public(path: Path, key: Ed25519PublicKey) -> None:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, pem, mode=0o644)
