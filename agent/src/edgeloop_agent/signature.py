"""Ed25519 verification of model artifacts before the agent loads them.

The control node signs the raw ONNX bytes of every registered version (see
``edgeloop_control.signing``); an agent refuses any artifact whose signature does
not match one of its trusted public keys. Several keys may be trusted at once so
a fleet can roll over to a new signing key without downtime.

``cryptography`` is imported inside the functions: most agent start-ups that never
receive a model (or run with verification off) should not pay for it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_LENGTH = 64


class SignatureError(Exception):
    """A signature is missing, malformed or does not match, or a key cannot be used."""


def load_public_keys(paths: Iterable[str | os.PathLike[str]]) -> list[Ed25519PublicKey]:
    """Read PEM (SubjectPublicKeyInfo) Ed25519 public keys, one per file."""
    keys = [_load_public_key(Path(p)) for p in paths]
    if not keys:
        raise SignatureError("no public key files given; an agent needs at least one to verify")
    return keys


def load_public_key_pem(pem: bytes, *, source: str = "PEM data") -> Ed25519PublicKey:
    """Parse one PEM public key; ``source`` names it in error messages."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if b"PRIVATE KEY" in pem:
        # A common slip when provisioning devices; the private key must stay on the control node.
        raise SignatureError(
            f"{source} holds a private key; give agents the public key (signing.pub) only"
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def decode_signature(signature_b64: str | None) -> bytes:
    """Base64 text -> the 64 raw signature bytes, with a clear error for each defect."""
    if signature_b64 is not None and not isinstance(signature_b64, str):
        raise SignatureError(f"signature must be base64 text, got {type(signature_b64).__name__}")
    if signature_b64 is None or not signature_b64.strip():
        raise SignatureError("artifact has no signature; refusing to load an unsigned model")
    try:
        raw = base64.b64decode("".join(signature_b64.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"signature is not valid base64: {_clip(signature_b64)!r}") from None
    if len(raw) != SIGNATURE_LENGTH:
        raise SignatureError(
            f"signature is {len(raw)} bytes long, an Ed25519 signature is {SIGNATURE_LENGTH}"
        )
    return raw


def verify(data: bytes, signature_b64: str | None, keys: Sequence[Ed25519PublicKey]) -> None:
    """Return if one of ``keys`` signed ``data``; raise :class:`SignatureError` otherwise."""
    from cryptography.exceptions import InvalidSignature

    raw = decode_signature(signature_b64)
    if not keys:
        raise SignatureError("no trusted public keys configured; cannot verify the artifact")
    for key in keys:
        try:
            key.verify(raw, bytes(data))
        except InvalidSignature:
            continue
        return
    raise SignatureError(
        f"signature does not match the artifact ({len(data)} bytes) for any of "
        f"{len(keys)} trusted key(s): the artifact was altered or signed by another key"
    )


def key_id(key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (sha256 of its raw 32 bytes, 16 hex digits)."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"public key file {path} does not exist") from None
    except OSError as exc:
        raise SignatureError(f"cannot read public key file {path}: {exc.strerror}") from None
    return load_public_key_pem(pem, source=f"public key file {path}")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
