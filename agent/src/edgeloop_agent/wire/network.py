"""How both sides reach the broker, and the one HOST:PORT rule for listeners.

:class:`BrokerAddress` is a broker URL parsed once (``mqtt://`` or ``mqtts://``, user,
password, ``?ca_file=``); :func:`tls_options` is what paho's ``tls_set`` gets for it, and
:func:`describe_connect_error` names in one line why a connection failed (OpenSSL's
own words for certificate problems), so a wrong CA file does not look like a broker
that is down. The agent and the control node connect with exactly these.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edgeloop_agent.wire.jsontext import json_text


class BrokerAddressError(ValueError):
    """A broker URL or CA file that cannot be used; the message names which."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    # PEM file of the CA(s) that may sign the broker's certificate; None: the system
    # store. From the agent's ca_file setting, or the URL's ?ca_file=/path (which is
    # how the control node's [broker] url carries it).
    ca_file: str | None = None
    # The client's own certificate and key (PEM), for a broker that requires one
    # (Mosquitto's require_certificate): the agent's cert_file/key_file settings.
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise BrokerAddressError(
                f"broker URL {json_text(_redact(url))} must start with mqtt:// or mqtts://"
            )
        if not parts.hostname:
            raise BrokerAddressError(f"broker URL {json_text(_redact(url))} has no host")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise BrokerAddressError(
                f"broker URL {json_text(_redact(url))} has an invalid port"
            ) from None
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"ca_file"})
        if unknown:
            raise BrokerAddressError(
                f"broker URL {json_text(_redact(url))}: unknown option {', '.join(unknown)} "
                "(known: ca_file)"
            )
        ca_file = query["ca_file"][-1] if "ca_file" in query else None
        address = cls(parts.hostname, port, tls, parts.username, parts.password)
        return address.with_ca_file(ca_file)

    def with_ca_file(self, ca_file: str | None) -> BrokerAddress:
        """This address verifying the broker against ``ca_file`` (None/"": unchanged)."""
        if not ca_file:
            return self
        if not self.tls:
            raise BrokerAddressError(
                f"a CA file ({ca_file}) is set but the broker {self} is not mqtts://: "
                "the connection would not be encrypted"
            )
        if not Path(ca_file).is_file():
            raise BrokerAddressError(f"CA file {ca_file} does not exist or is not a file")
        return replace(self, ca_file=ca_file)

    def with_client_cert(self, cert_file: str | None, key_file: str | None) -> BrokerAddress:
        """This address presenting ``cert_file``/``key_file`` (both or neither) to the broker."""
        if not cert_file and not key_file:
            return self
        if not cert_file or not key_file:
            raise BrokerAddressError("a client certificate needs both cert_file and key_file")
        if not self.tls:
            raise BrokerAddressError(
                f"a client certificate is set but the broker {self} is not mqtts://"
            )
        for path in (cert_file, key_file):
            if not Path(path).is_file():
                raise BrokerAddressError(f"client certificate file {path} is not a file")
        return replace(self, cert_file=cert_file, key_file=key_file)

    def __str__(self) -> str:
        # Never the credentials: this string goes into logs.
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def tls_options(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> dict[str, Any]:
    """paho ``tls_set`` arguments: verify the broker's chain and host name, and
    present the client certificate when there is one."""
    options: dict[str, Any] = {"ca_certs": ca_file or None, "cert_reqs": ssl.CERT_REQUIRED}
    if cert_file and key_file:
        options.update(certfile=cert_file, keyfile=key_file)
    return options


# X509_V_ERR_* codes that mean "the certificate is fine, but nothing you trust
# signed it": the fix is the CA file, so the line says so.
_UNTRUSTED = {
    18: "self-signed",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "self-signed CA in the chain",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "issuer not trusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "issuer not trusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
_IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH


def describe_connect_error(exc: BaseException, ca_file: str | None = None) -> str:
    """One line naming why a connection attempt failed."""
    trust = f"CA file {ca_file}" if ca_file else "the system CA store (set ca_file)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        reason = getattr(exc, "verify_message", None) or str(exc)
        text = f"TLS certificate verify failed: {reason}"
        if code in _UNTRUSTED:
            return f"{text} (the broker's certificate is not signed by a CA in {trust})"
        if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            return f"{text} (the broker URL must name a host its certificate lists)"
        return text
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        hint = " (is that port plain MQTT, not TLS?)" if "WRONG_VERSION_NUMBER" in str(exc) else ""
        return f"TLS handshake failed: {reason}{hint}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running, and is that its port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror or exc}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def parse_listen(value: str, what: str = "metrics_listen") -> tuple[str, int]:
    """``host:port`` (``[::1]:9108`` for IPv6) -> (host, port); raises ValueError naming
    ``what`` (the setting or flag). Shared by every listener the product opens."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {json_text(value)} must be host:port, e.g. 127.0.0.1:9108")
    return host.strip("[]"), int(port)
