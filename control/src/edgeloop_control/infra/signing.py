"""Ed25519 signing on the control node: artifacts, artifact statements, desired state.

The private key never leaves the control node; agents get the public key. Keys
are PEM files: PKCS8 for the private key (mode 0600), SubjectPublicKeyInfo for
the public key. What agents verify (``edgeloop_agent.wire.signature``):

* the desired-state envelope (:func:`sign_desired`), over the exact payload bytes;
* each artifact's statement ``{name, version, sha256, size}``
  (:func:`sign_artifact_statement`), which binds the bytes to their identity.

The registry also keeps a signature over the raw ONNX bytes of each version
(:func:`sign`), checked on the control node only.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgeloop_agent.wire.desired import peek_document, seal_envelope
from edgeloop_agent.wire.signature import (
    SignatureError,
    artifact_statement,
    canonical_json,
    desired_message,
    key_id,
    load_public_key_pem,
    verify,
)
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra.files import atomic_write

__all__ = [
    "SigningError",
    "ensure_keypair",
    "generate_keypair",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "sign",
    "sign_artifact_statement",
    "sign_desired",
    "verify",
]


class SigningError(EdgeloopError):
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


def sign_artifact_statement(
    name: str, version: str, sha256: str, size: int, key: Ed25519PrivateKey
) -> str:
    """Base64 signature over the artifact's identity: its bytes only count under this name."""
    return base64.b64encode(key.sign(artifact_statement(name, version, sha256, size))).decode()


def sign_desired(doc: dict[str, Any], keys: list[Ed25519PrivateKey]) -> bytes:
    """The envelope agents accept: base64 canonical JSON plus one signature per key.

    Several keys sign during a rotation's overlap, so devices trusting either
    the old or the new public key accept the document.
    """
    if not keys:
        raise SigningError("no signing key given")
    payload = canonical_json(doc)
    message = desired_message(payload)
    return seal_envelope(
        payload,
        [(key_id(k.public_key()), base64.b64encode(k.sign(message)).decode()) for k in keys],
    )


DEFAULT_DESIRED_TTL_DAYS = 30.0


class DesiredSigner:
    """What every publish of desired state signs with: the workspace key and a lifetime.

    ``ttl_s`` bounds a freeze attack (a device kept on an old document by someone
    replaying or withholding messages): past ``expires`` the agent applies no
    such document and reports ``desired_expired``. The control daemon re-signs
    before that (see docs/operations.md).
    """

    def __init__(self, keys: list[Ed25519PrivateKey], ttl_s: float) -> None:
        if not keys:
            raise SigningError("no signing key given")
        if not ttl_s > 0:
            raise SigningError(f"desired-state lifetime must be positive, got {ttl_s!r}")
        self.keys = keys
        self.ttl_s = ttl_s

    @classmethod
    def for_workspace(cls, ws: Any) -> DesiredSigner:
        """``[signing] private_key`` and ``desired_ttl_days`` of a workspace."""
        section = ws.section("signing")
        ttl_days = section.get("desired_ttl_days", DEFAULT_DESIRED_TTL_DAYS)
        if isinstance(ttl_days, bool) or not isinstance(ttl_days, (int, float)) or ttl_days <= 0:
            raise SigningError(
                f"signing.desired_ttl_days must be a positive number, got {ttl_days!r}"
            )
        return cls([load_signing_key(ws.signing_key_path)], float(ttl_days) * 86400)

    def seal(self, device: str, doc: dict[str, Any], now: float) -> tuple[dict[str, Any], bytes]:
        """(the document as signed, the envelope to publish) for one device.

        Re-sealing an unchanged document gives the same bytes while its expiry
        is more than half a lifetime away (Ed25519 is deterministic), so an
        idempotent retry of a publish is not a different document.
        """
        expires = doc.get("expires")
        if not isinstance(expires, (int, float)) or expires < now + self.ttl_s / 2:
            expires = int(now + self.ttl_s)
        key = self.keys[0]
        models = []
        for m in doc["models"]:
            size = m.get("size")
            if not isinstance(size, int) or isinstance(size, bool):
                raise SigningError(f"{m.get('name')}@{m.get('version')} has no size to sign")
            models.append(
                {
                    **m,
                    "signature": sign_artifact_statement(
                        m["name"], m["version"], m["sha256"], size, key
                    ),
                }
            )
        sealed = {**doc, "device": device, "expires": expires, "models": models}
        return sealed, sign_desired(sealed, self.keys)


def open_desired(raw: bytes | bytearray) -> dict[str, Any]:
    """The document inside an envelope, unverified (for display and tests on the control side)."""
    doc = peek_document(bytes(raw))
    if not isinstance(doc, dict):
        raise ValueError(f"desired state must be a JSON object, got {type(doc).__name__}")
    return doc


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, pem, mode=0o600)


def _write_public(path: Path, key: Ed25519PublicKey) -> None:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, pem, mode=0o644)
