"""Ed25519 verification of desired-state documents and model artifacts.

Two things are signed by the control node (see ``edgeloop_control.infra.signing``):

* the whole desired-state document, as an envelope
  ``{"payloadType", "payload": base64(canonical JSON), "signatures": [{"keyid", "sig"}]}``;
  the agent verifies the exact payload bytes and only then parses them, so no
  re-serialisation can change what was signed;
* each artifact, as a small statement ``{name, version, sha256, size}``, so the
  signed bytes of ``m@v1`` cannot be presented as ``other@v999``.

Each message is prefixed with its own domain tag, so a signature made for one
kind of message can never verify as the other. Several keys may be trusted at
once so a fleet can roll over to a new signing key without downtime.

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

from edgeloop_agent.wire.jsontext import json_text

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SIGNATURE_LENGTH = 64

DESIRED_PAYLOAD_TYPE = "application/vnd.edgeloop.desired.v1+json"
# Domain separation: what is actually signed is TAG + bytes.
DESIRED_TAG = b"edgeloop-desired-v1\0"
ARTIFACT_TAG = b"edgeloop-artifact-v1\0"


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
        raise SignatureError(
            f"signature is not valid base64: {json_text(_clip(signature_b64))}"
        ) from None
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


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that edgeloop signs (sorted keys, ASCII, no spaces)."""
    import json

    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def artifact_statement(name: str, version: str, sha256: str, size: int) -> bytes:
    """The bytes an artifact signature covers: the artifact's identity, not just its content."""
    body = {"name": name, "version": version, "sha256": sha256, "size": size}
    return ARTIFACT_TAG + canonical_json(body)


def desired_message(payload: bytes) -> bytes:
    return DESIRED_TAG + payload


def verify_any(
    message: bytes, signatures: Sequence[tuple[str | None, str]], keys: Sequence[Ed25519PublicKey]
) -> str:
    """Key id of the first trusted key that signed ``message``; SignatureError if none did.

    ``signatures`` are (keyid, base64 signature) pairs; the key id is only a hint
    (every trusted key is tried against every signature), so a wrong or missing
    key id never makes a good signature fail.
    """
    from cryptography.exceptions import InvalidSignature

    if not keys:
        raise SignatureError("no trusted public keys configured; cannot verify")
    if not signatures:
        raise SignatureError("no signatures")
    problems: list[str] = []
    for _, sig in signatures[:8]:  # a hostile document may carry thousands
        try:
            raw = decode_signature(sig)
        except SignatureError as exc:
            problems.append(str(exc))
            continue
        for key in keys:
            try:
                key.verify(raw, message)
            except InvalidSignature:
                continue
            return key_id(key)
    detail = f" ({'; '.join(problems[:2])})" if problems else ""
    raise SignatureError(
        f"no signature matches any of {len(keys)} trusted key(s){detail}: altered, "
        "or signed by a key this device does not trust"
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
