"""The control node's small certificate authority: device identities for the broker.

Mosquitto with ``require_certificate true`` and ``use_identity_as_username true``
admits a client whose certificate this CA signed and names it by the certificate's
common name, which is the device id; the ACL then grants that name its own topics.
Revocation is a CRL (``crlfile``) the broker rereads on SIGHUP.

Layout (under the workspace's ``ca/`` by default): ``ca.key`` (0600, the only secret),
``ca.crt``, ``crl.pem`` and ``revoked.json`` (the serials the CRL lists, so it can be
rebuilt). Keys are EC P-256: made in milliseconds, accepted by Mosquitto/OpenSSL 3.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra.files import atomic_write

CA_NAME = "edgeloop device CA"
# A device certificate lasts this long; re-enrol (revoke, add) to renew it.
DEVICE_CERT_DAYS = 3 * 365
CA_CERT_DAYS = 10 * 365
# The broker reads the CRL from a local file, so it need not expire soon; but an
# expired CRL makes OpenSSL refuse EVERY client, so it is far in the future and
# rewritten (with a new next-update) at each revocation.
CRL_DAYS = 10 * 365
_CLOCK_SKEW = dt.timedelta(minutes=5)


class CAError(EdgeloopError):
    """The certificate authority cannot be used (unreadable key, bad files)."""


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str
    key_pem: str
    serial: int
    not_after: float


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """Open (or create, on first use) the CA in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.key_path = self.directory / "ca.key"
        self.cert_path = self.directory / "ca.crt"
        self.crl_path = self.directory / "crl.pem"
        self.revoked_path = self.directory / "revoked.json"
        if not self.key_path.exists():
            self._create()
        self._key, self._cert = self._load()

    # -- creation and loading ----------------------------------------------------------

    def _create(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(CA_NAME))
            .issuer_name(_name(CA_NAME))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=CA_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # The certificate first: a crash between the two leaves no key without its cert
        # to be mistaken for a CA (the key's existence is what "created" means).
        atomic_write(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        atomic_write(self.key_path, _key_pem(key), mode=0o600)
        self._key, self._cert = key, cert
        self._write_crl([])

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        try:
            mode = self.key_path.stat().st_mode & 0o777
            if mode & 0o077:
                raise CAError(
                    f"CA key {self.key_path} is readable by others (mode {mode:o}); "
                    f"chmod 600 it (and consider the CA compromised)"
                )
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise CAError(f"cannot load the CA in {self.directory}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"CA key {self.key_path} is not an EC key")
        return key, cert

    @property
    def cert_pem(self) -> str:
        return self._cert.public_bytes(serialization.Encoding.PEM).decode()

    # -- issuing -------------------------------------------------------------------------

    def issue_client(self, common_name: str, days: int = DEVICE_CERT_DAYS) -> IssuedCert:
        """A client certificate whose CN is ``common_name`` (the device id)."""
        return self._issue(common_name, days, client=True, hosts=[])

    def issue_server(self, hosts: list[str], days: int = DEVICE_CERT_DAYS) -> IssuedCert:
        """A broker certificate for ``hosts`` (DNS names or IP addresses)."""
        return self._issue(hosts[0], days, client=False, hosts=hosts)

    def _issue(self, cn: str, days: int, *, client: bool, hosts: list[str]) -> IssuedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        serial = x509.random_serial_number()
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName(_alt(hosts)), False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCert(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=_key_pem(key).decode(),
            serial=serial,
            not_after=cert.not_valid_after_utc.timestamp(),
        )

    # -- revocation ----------------------------------------------------------------------

    def revoked(self) -> dict[int, float]:
        """Serial -> revocation time of every certificate revoked so far."""
        if not self.revoked_path.exists():
            return {}
        try:
            data = json.loads(self.revoked_path.read_text())
            return {int(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise CAError(f"cannot read {self.revoked_path}: {exc}") from None

    def revoke(self, serial: int) -> Path:
        """Add ``serial`` to the CRL and rewrite it; returns the CRL's path."""
        revoked = self.revoked()
        revoked.setdefault(serial, _now().timestamp())
        atomic_write(
            self.revoked_path,
            json.dumps({str(k): v for k, v in sorted(revoked.items())}, indent=1).encode(),
            mode=0o644,
        )
        self._write_crl(sorted(revoked.items()))
        return self.crl_path

    def _write_crl(self, revoked: list[tuple[int, float]]) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(dt.datetime.fromtimestamp(when, dt.timezone.utc))
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        # 0644: Mosquitto (its own user) reads it; it holds no secret.
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _alt(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names
