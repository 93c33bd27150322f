"""A site whose devices are enrolled by the control node, for the enrolment tests.

Mosquitto runs the shipped packaging/mosquitto-edgeloop.conf with its device listener
replaced by packaging/mosquitto-edgeloop-enrolment.conf (require_certificate,
use_identity_as_username, crlfile), only ports and paths moved. The ACL and the
password file are the ones ``fleet/enrolment.py`` writes; the CA is the workspace's.
The control node's own user (a password, on the loopback listener) is made here, as
an operator would with mosquitto_passwd.
"""

from __future__ import annotations

import getpass
import json
import queue
import re
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop_agent.wire.network import tls_options
from edgeloop_control.infra.ca import CertificateAuthority
from edgeloop_control.infra.mosquitto import PrivateBroker, free_port
from edgeloop_control.infra.signing import ensure_keypair
from edgeloop_control.infra.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "packaging" / "mosquitto-edgeloop.conf"
ENROLMENT_CONF = REPO / "packaging" / "mosquitto-edgeloop-enrolment.conf"
CONTROL_PASSWORD = "pw-control"


class EnrolledSite(PrivateBroker):
    """``port``: plain loopback listener (control node), ``tls_port``: devices."""

    def __init__(self, root: Path, *, plain_devices: bool = False) -> None:
        super().__init__(root / "broker")
        self.tls_port = free_port()
        # Password devices on a site without TLS dial the plain listener.
        device_url = (
            f"mqtt://127.0.0.1:{self.port}"
            if plain_devices
            else f"mqtts://localhost:{self.tls_port}"
        )
        url = f"mqtt://edgeloop-control:{CONTROL_PASSWORD}@127.0.0.1:{self.port}"
        self.ws = Workspace.init(root / "ws", broker=url)
        ensure_keypair(self.ws.signing_key_path, self.ws.public_key_path)
        self.acl = self.workdir / "edgeloop.acl"
        self.passwd = self.workdir / "edgeloop.passwd"
        self.pid_file = self.workdir / "mosquitto.pid"
        with (self.ws.root / "edgeloop.toml").open("a") as fh:
            fh.write(
                "\n[enrolment]\n"
                f'broker_url = "{device_url}"\n'
                f'acl_file = "{self.acl}"\n'
                f'password_file = "{self.passwd}"\n'
                f'broker_pid_file = "{self.pid_file}"\n'
            )
        self.ws = Workspace.open(self.ws.root)
        # The CA exists before the broker starts: Mosquitto needs its cafile and crlfile.
        self.ca = CertificateAuthority(self.ws.root / "ca")
        server = self.ca.issue_server(["localhost", "127.0.0.1"])
        self.server_cert = self.workdir / "broker.crt"
        self.server_key = self.workdir / "broker.key"
        self.server_cert.write_text(server.cert_pem)
        self.server_key.write_text(server.key_pem)
        self.server_key.chmod(0o600)

    def write_config(self) -> Path:
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        if not self.passwd.exists():
            subprocess.run(
                [
                    "mosquitto_passwd",
                    "-c",
                    "-b",
                    str(self.passwd),
                    "edgeloop-control",
                    CONTROL_PASSWORD,
                ],
                check=True,
                capture_output=True,
            )
        if not self.acl.exists():
            from edgeloop_control.fleet.enrolment import ACL_TEMPLATE, BEGIN, END

            self.acl.write_text(ACL_TEMPLATE.format(prefix="edgeloop", begin=BEGIN, end=END))
        conf = SHIPPED_CONF.read_text()
        listener = re.compile(r"^listener 8883$.*?^keyfile .*?$", re.M | re.S)
        enrolment = ENROLMENT_CONF.read_text()
        conf, n = listener.subn(lambda _m: enrolment, conf)
        assert n == 1, "the shipped conf no longer has one `listener 8883 ... keyfile` block"
        replacements = {
            r"^listener 1883 127\.0\.0\.1$": f"listener {self.port} 127.0.0.1",
            r"^listener 8883$": f"listener {self.tls_port} 127.0.0.1",
            r"^cafile .*$": f"cafile {self.ca.cert_path}",
            r"^certfile .*$": f"certfile {self.server_cert}",
            r"^keyfile .*$": f"keyfile {self.server_key}",
            r"^crlfile .*$": f"crlfile {self.ca.crl_path}",
            r"^password_file .*$": f"password_file {self.passwd}",
            r"^acl_file .*$": f"acl_file {self.acl}",
            r"^#persistence_location .*$": f"persistence_location {data_dir}/",
        }
        for pattern, value in replacements.items():
            conf, n = re.subn(pattern, value, conf, flags=re.M)
            assert n == 1, f"expected exactly one line {pattern}"
        self.config_path.write_text(
            f"user {getpass.getuser()}\nlog_dest file {self.log_path}\nlog_type all\n" + conf
        )
        return self.config_path

    def start(self, timeout: float = 10.0) -> EnrolledSite:
        super().start(timeout)
        assert self.proc is not None
        # What `systemctl reload mosquitto` signals: the control node SIGHUPs this pid.
        self.pid_file.write_text(f"{self.proc.pid}\n")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class TLSClient:
    """A paho MQTT 5 client on the device listener with a certificate or a password."""

    def __init__(
        self,
        site: EnrolledSite,
        *,
        ca_file: Path,
        cert: Path | None = None,
        key: Path | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set(
            **tls_options(str(ca_file), str(cert) if cert else None, str(key) if key else None)
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.pubacks: dict[int, int] = {}
        self._acked = threading.Condition()
        self._connack = threading.Event()
        self.reason: Any = None
        self.error: BaseException | None = None
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.on_publish = self._on_publish
        try:
            self.client.connect("localhost", site.tls_port, keepalive=30)
        except OSError as exc:  # the TLS handshake itself refused (revoked certificate)
            self.error = exc
            self._connack.set()
            return
        self.client.loop_start()
        self._connack.wait(10)

    @property
    def accepted(self) -> bool:
        return self.error is None and self.reason is not None and not self.reason.is_failure

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self._connack.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._acked:
            self.pubacks[mid] = reason.value
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes | dict[str, Any], retain: bool = False) -> int:
        """Publish with QoS 1; the PUBACK's reason code (0x87: not authorised)."""
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.pubacks, 30), topic
            return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
