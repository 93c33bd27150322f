"""Mosquitto running the SHIPPED configuration: packaging/mosquitto-edgeloop.conf with
only its ports and file paths moved into the test's directory, packaging/edgeloop.acl
copied verbatim, a password file made by mosquitto_passwd and TLS certificates from
tests/pki.py. Every other line is the operator's.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from pathlib import Path

from edgeloop_control.infra.mosquitto import PrivateBroker, free_port
from tests.pki import CertificateAuthority, CertPair

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONF = REPO / "packaging" / "mosquitto-edgeloop.conf"
SHIPPED_ACL = REPO / "packaging" / "edgeloop.acl"


def password(user: str) -> str:
    return f"pw-{user}"


class ShippedBroker(PrivateBroker):
    """``port`` is the plain loopback listener, ``tls_port`` the TLS one."""

    def __init__(
        self,
        workdir: Path,
        users: list[str],
        *,
        server: CertPair | None = None,
        ca: CertificateAuthority | None = None,
        tls_port: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.users = list(users)
        self.ca = ca or CertificateAuthority(self.workdir / "pki")
        self.server = server or self.ca.server("broker", ["localhost", "127.0.0.1"])
        self.tls_port = tls_port or free_port()

    def tls_url(self, user: str | None = None, host: str = "localhost") -> str:
        auth = f"{user}:{password(user)}@" if user else ""
        return f"mqtts://{auth}{host}:{self.tls_port}"

    def plain_url(self, user: str) -> str:
        return f"mqtt://{user}:{password(user)}@127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        acl = self.workdir / "edgeloop.acl"
        shutil.copyfile(SHIPPED_ACL, acl)
        passwd = self.workdir / "edgeloop.passwd"
        passwd.unlink(missing_ok=True)
        for i, user in enumerate(self.users):
            create = ["-c"] if i == 0 else []
            subprocess.run(
                ["mosquitto_passwd", *create, "-b", str(passwd), user, password(user)],
                check=True,
                capture_output=True,
            )
        conf = SHIPPED_CONF.read_text()
        replacements = {
            r"^listener 1883 127\.0\.0\.1$": f"listener {self.port} 127.0.0.1",
            r"^listener 8883$": f"listener {self.tls_port} 127.0.0.1",
            r"^cafile .*$": f"cafile {self.ca.cert}",
            r"^certfile .*$": f"certfile {self.server.cert}",
            r"^keyfile .*$": f"keyfile {self.server.key}",
            r"^password_file .*$": f"password_file {passwd}",
            r"^acl_file .*$": f"acl_file {acl}",
            r"^#persistence_location .*$": f"persistence_location {data_dir}/",
        }
        for pattern, value in replacements.items():
            conf, n = re.subn(pattern, value, conf, flags=re.M)
            assert n == 1, f"the shipped conf no longer has exactly one line {pattern}"
        # As root, Mosquitto would switch to the `mosquitto` user, who cannot read here.
        self.config_path.write_text(
            f"user {getpass.getuser()}\nlog_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n" + conf
        )
        return self.config_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
