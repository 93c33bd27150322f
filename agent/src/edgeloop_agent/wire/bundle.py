"""The enrolment bundle: everything a device needs to join the fleet, in one file.

The control node writes it (``edgeloop fleet add ID --identity ... --bundle PATH``),
the operator carries it to the device, and ``edgeloop-agent enroll PATH`` installs it.
Both sides use this module, so the format is spelled once.

One JSON document, not a tar archive: a single file is copied and deleted as a
whole (no half-extracted directory left holding a private key), JSON has no
member paths to traverse out of the target directory, and the agent parses it with
the standard library. Its ``sha256`` field covers every other field (canonical
JSON), so a truncated or edited bundle is refused before anything is written.

That digest detects corruption and careless edits, not a forger: whoever can
rewrite the bundle can recompute it, and the bundle itself carries the signing key
the device will trust. Its authenticity comes from how it travels (0600 on both
ends, copied by the operator over a channel they trust), docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.names import check_device_id
from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.signature import SignatureError, load_public_key_pem
from edgeloop_agent.wire.topics import DEFAULT_PREFIX, validate_prefix

FORMAT: Final = "edgeloop-enrolment/1"
IDENTITIES: Final = ("certificate", "password")
# A bundle holds a few PEM blocks; anything much larger is not one.
MAX_BUNDLE_BYTES: Final = 256 * 1024


class BundleError(ValueError):
    """A bundle that cannot be installed; the message names what is wrong."""


@dataclass(frozen=True)
class EnrolmentBundle:
    device_id: str
    identity: str  # "certificate" or "password"
    # Broker URL for the device, without credentials: mqtts://host:8883.
    broker: str
    # PEM of the CA that signed the broker's certificate ("" with plain mqtt://).
    ca_cert: str
    # PEM public keys (Ed25519) allowed to sign desired state and artifacts.
    trusted_keys: list[str]
    topic_prefix: str = DEFAULT_PREFIX
    # identity "certificate": the device's X.509 client certificate and its key.
    client_cert: str = ""
    client_key: str = ""
    # identity "password": the broker user name (= device id) and its password.
    username: str = ""
    password: str = ""
    issued_at: float = 0.0
    format: str = field(default=FORMAT)

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        """The bundle file's content: the fields and their sha256, one JSON object."""
        self.check()
        body = self.fields()
        return json.dumps({**body, "sha256": _digest(body)}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> EnrolmentBundle:
        """Parse and check a bundle file; BundleError names the first problem."""
        if len(raw) > MAX_BUNDLE_BYTES:
            raise BundleError(f"is {len(raw)} bytes, more than a bundle ({MAX_BUNDLE_BYTES})")
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise BundleError("is not JSON (truncated, or not an enrolment bundle)") from None
        if not isinstance(doc, dict):
            raise BundleError("is not a JSON object")
        if doc.get("format") != FORMAT:
            raise BundleError(f"format {json_text(doc.get('format'))} is not {json_text(FORMAT)}")
        digest = doc.pop("sha256", None)
        known = {f for f in cls.__dataclass_fields__}
        missing = sorted(known - set(doc) - {"format"})
        if missing:
            raise BundleError(f"is missing {', '.join(missing)} (a partial bundle)")
        unknown = sorted(set(doc) - known)
        if unknown:
            raise BundleError(f"has unknown fields {', '.join(unknown)}")
        if not isinstance(digest, str) or digest != _digest(doc):
            raise BundleError("sha256 does not match its content: it was altered or truncated")
        try:
            bundle = cls(**doc)
        except TypeError as exc:
            raise BundleError(str(exc)) from None
        bundle.check()
        return bundle

    def check(self) -> None:
        """Every field usable by the device; BundleError names the first that is not."""
        texts = ("device_id", "identity", "broker", "ca_cert", "topic_prefix", "format")
        for name in (*texts, "client_cert", "client_key", "username", "password"):
            if not isinstance(getattr(self, name), str):
                raise BundleError(f"{name} must be a string")
        try:
            check_device_id(self.device_id)
            validate_prefix(self.topic_prefix)
            address = BrokerAddress.parse(self.broker)
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        if address.username or address.password:
            raise BundleError("broker URL must not carry credentials (they have fields)")
        if self.identity not in IDENTITIES:
            raise BundleError(
                f"identity {json_text(self.identity)} is not one of {', '.join(IDENTITIES)}"
            )
        if address.tls and not _pem(self.ca_cert, "CERTIFICATE"):
            raise BundleError("ca_cert is not a PEM certificate (needed for mqtts://)")
        if not isinstance(self.trusted_keys, list) or not self.trusted_keys:
            raise BundleError("trusted_keys must list at least one public key")
        if not all(_pem(k, "PUBLIC KEY") for k in self.trusted_keys):
            raise BundleError("trusted_keys must be PEM public keys")
        for i, pem in enumerate(self.trusted_keys):
            try:
                load_public_key_pem(pem.encode(), source=f"trusted_keys[{i}]")
            except SignatureError as exc:
                raise BundleError(str(exc)) from None
        if self.identity == "certificate":
            self._check_certificate(address)
        elif not self.password or self.username != self.device_id:
            raise BundleError("identity password needs username = device id and a password")

    def _check_certificate(self, address: BrokerAddress) -> None:
        if not address.tls:
            raise BundleError("identity certificate needs an mqtts:// broker")
        if not _pem(self.client_cert, "CERTIFICATE"):
            raise BundleError("client_cert is not a PEM certificate")
        if not _pem(self.client_key, "PRIVATE KEY"):
            raise BundleError("client_key is not a PEM private key")
        try:
            cert = x509.load_pem_x509_certificate(self.client_cert.encode())
            key = serialization.load_pem_private_key(self.client_key.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise BundleError(f"client certificate or key does not load: {exc}") from None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [self.device_id]:
            raise BundleError(f"client_cert is not for device {self.device_id} (its CN differs)")
        # The broker would refuse the pair only at the handshake, in a log line far away.
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if key.public_key().public_bytes(pem, public) != cert.public_key().public_bytes(
            pem, public
        ):
            raise BundleError("client_key does not belong to client_cert")


def _pem(text: Any, kind: str) -> bool:
    """A PEM block of ``kind`` (any ``... PRIVATE KEY`` for keys), complete."""
    if not isinstance(text, str):
        return False
    head, _, rest = text.strip().partition("\n")
    return (
        head.startswith("-----BEGIN ")
        and head.endswith(f"{kind}-----")
        and rest.rstrip().endswith(f"{kind}-----")
        and "-----END " in rest
    )


def _digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
