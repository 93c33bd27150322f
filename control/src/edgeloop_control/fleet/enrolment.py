"""A device's broker identity: issued (``enrol``), and taken away (``revoke``).

``enrol`` gives a device either an X.509 client certificate from the workspace's CA
(``infra/ca.py``; Mosquitto with ``require_certificate`` and
``use_identity_as_username`` names the client by the certificate's CN, the device
id) or a password entry written with ``mosquitto_passwd``, for sites without TLS.
It adds the device's own section to the broker's ACL, reloads the broker, records
the identity in ``device_identities`` and writes the enrolment bundle
(``edgeloop_agent.wire.bundle``, 0600) that ``edgeloop-agent enroll`` installs.

``revoke`` puts the certificate on the CRL (or deletes the password entry), removes
the device's ACL section and reloads the broker (SIGHUP rereads the ACL, the
password file and the CRL). The ACL is per device, not Mosquitto ``pattern`` lines,
because of revocation: a pattern grants ANY authenticated name, so a revoked
device that is still connected (a reload does not drop connections) would keep its
topics; with its section gone every publish and delivery to it is refused at once.

Settings (``[enrolment]`` in edgeloop.toml, relative paths against the workspace):
``broker_url`` (what devices dial, e.g. mqtts://broker.example:8883; default the
control node's own broker URL without credentials), ``password_broker_url`` (what
password devices dial, default ``broker_url``), ``broker_ca_file`` (CA of the
broker's certificate; default this CA), ``ca_dir`` (``ca``), ``acl_file``
(``broker/edgeloop.acl``), ``password_file`` (``broker/edgeloop.passwd``),
``broker_pid_file`` (SIGHUP that process) or ``reload_command`` (argv; default
``["systemctl", "reload", "mosquitto"]``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlunsplit

from edgeloop_agent.wire.bundle import BundleError, EnrolmentBundle
from edgeloop_agent.wire.names import check_device_id
from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_agent.wire.topics import Topics
from edgeloop_control.errors import ConfigError, EdgeloopError
from edgeloop_control.infra.ca import CAError, CertificateAuthority
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.files import atomic_write
from edgeloop_control.infra.workspace import Workspace

Method = Literal["certificate", "password"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_identities (
    device TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    serial TEXT,
    issued_at REAL NOT NULL,
    not_after REAL,
    revoked_at REAL
);
"""

BEGIN = "# BEGIN edgeloop enrolled devices (rewritten by `edgeloop fleet add/revoke`)"
END = "# END edgeloop enrolled devices"

ACL_TEMPLATE = """\
# Mosquitto ACL of an edgeloop fleet whose devices are enrolled by the control node
# (`edgeloop fleet add ID --identity ...`, `edgeloop fleet revoke ID`). The block
# between the BEGIN and END lines is rewritten at every enrolment and revocation:
# one `user` section per enrolled device (its id = its certificate CN or broker user
# name), never `pattern` lines, so a revoked device loses every topic at the reload.
# Everything outside the block is yours: add one section per application as in
# packaging/edgeloop.acl. docs/operations.md, "Enrolling a device".

user edgeloop-control
topic readwrite {prefix}/#

{begin}
{end}
"""


class EnrolmentError(EdgeloopError):
    """An identity that cannot be issued or revoked; the message says why."""


@dataclass(frozen=True)
class EnrolmentResult:
    device: str
    method: str
    bundle: Path
    broker: str  # what the device dials (no credentials)
    serial: str | None  # the certificate's serial (hex), None for a password
    not_after: float | None  # when the certificate expires


@dataclass(frozen=True)
class Identity:
    device: str
    method: str
    serial: str | None
    issued_at: float
    not_after: float | None
    revoked_at: float | None

    @property
    def state(self) -> str:
        return "revoked" if self.revoked_at is not None else "enrolled"


# -- settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentSettings:
    broker_url: str
    # Where password devices dial: the certificate listener never asks for a password.
    password_broker_url: str
    broker_ca_file: Path | None
    ca_dir: Path
    acl_file: Path
    password_file: Path
    broker_pid_file: Path | None
    reload_command: list[str]
    prefix: str

    @classmethod
    def for_workspace(cls, ws: Workspace) -> EnrolmentSettings:
        section = ws.section("enrolment")
        known = {
            "broker_url",
            "password_broker_url",
            "broker_ca_file",
            "ca_dir",
            "acl_file",
            "password_file",
            "broker_pid_file",
            "reload_command",
        }
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"[enrolment] has unknown settings {', '.join(unknown)}")
        reload_command = section.get("reload_command", ["systemctl", "reload", "mosquitto"])
        if not isinstance(reload_command, list) or not all(
            isinstance(a, str) for a in reload_command
        ):
            raise ConfigError("[enrolment] reload_command must be a list of strings (argv)")

        def optional(key: str) -> Path | None:
            return ws.path_setting("enrolment", key, "") if section.get(key) else None

        broker_url = _device_url(str(section.get("broker_url") or ws.broker_url()))
        return cls(
            broker_url=broker_url,
            password_broker_url=_device_url(str(section.get("password_broker_url") or broker_url)),
            broker_ca_file=optional("broker_ca_file"),
            ca_dir=ws.path_setting("enrolment", "ca_dir", "ca"),
            acl_file=ws.path_setting("enrolment", "acl_file", "broker/edgeloop.acl"),
            password_file=ws.path_setting("enrolment", "password_file", "broker/edgeloop.passwd"),
            broker_pid_file=optional("broker_pid_file"),
            reload_command=list(reload_command),
            prefix=ws.topic_prefix,
        )


def _device_url(url: str) -> str:
    """``url`` as a device dials it: no credentials, no ``?ca_file=`` (the bundle carries
    the CA), so the control node's own [broker] url can serve as the default."""
    try:
        address = BrokerAddress.parse(url)
    except ValueError as exc:
        raise ConfigError(f"[enrolment] broker_url: {exc}") from None
    host = f"[{address.host}]" if ":" in address.host else address.host
    scheme = "mqtts" if address.tls else "mqtt"
    return urlunsplit((scheme, f"{host}:{address.port}", "", "", ""))


# -- the identity table -----------------------------------------------------------------


def _table(db: ControlDB) -> None:
    db.conn.executescript(SCHEMA)


def identity(db: ControlDB, device: str) -> Identity | None:
    _table(db)
    row = db.conn.execute("SELECT * FROM device_identities WHERE device = ?", (device,)).fetchone()
    return _identity(row) if row else None


def identities(db: ControlDB) -> dict[str, Identity]:
    """Every device's identity, revoked ones included (what `edgeloop fleet` shows)."""
    _table(db)
    rows = db.conn.execute("SELECT * FROM device_identities ORDER BY device").fetchall()
    return {r["device"]: _identity(r) for r in rows}


def _identity(row: Any) -> Identity:
    return Identity(
        device=row["device"],
        method=row["method"],
        serial=row["serial"],
        issued_at=row["issued_at"],
        not_after=row["not_after"],
        revoked_at=row["revoked_at"],
    )


# -- enrol ------------------------------------------------------------------------------


def enrol(
    ws: Workspace, db: ControlDB, device: str, *, method: Method | str, bundle: Path
) -> EnrolmentResult:
    """Issue ``device``'s identity, grant its topics, reload the broker, write ``bundle``."""
    try:
        check_device_id(device)
    except ValueError as exc:
        raise EnrolmentError(str(exc)) from None
    if method not in ("certificate", "password"):
        raise EnrolmentError(f"identity {method!r} is not certificate or password")
    settings = EnrolmentSettings.for_workspace(ws)
    current = identity(db, device)
    if current is not None and current.revoked_at is None:
        raise EnrolmentError(
            f"device {device} is already enrolled ({current.method}); "
            f"`edgeloop fleet revoke {device}` first to issue a new identity"
        )
    bundle = Path(bundle)
    if bundle.exists() and not bundle.is_file():
        raise EnrolmentError(f"bundle path {bundle} is not a file")
    if not bundle.parent.is_dir():
        raise EnrolmentError(f"bundle directory {bundle.parent} does not exist")
    try:
        ca = CertificateAuthority(settings.ca_dir)
    except CAError as exc:
        raise EnrolmentError(str(exc)) from None
    fields: dict[str, Any] = {}
    serial: str | None = None
    not_after: float | None = None
    if method == "certificate":
        if not settings.broker_url.startswith("mqtts://"):
            raise EnrolmentError(
                f"identity certificate needs a TLS broker: [enrolment] broker_url is "
                f"{settings.broker_url}; set it to mqtts://HOST:8883"
            )
        issued = ca.issue_client(device)
        fields = {"client_cert": issued.cert_pem, "client_key": issued.key_pem}
        serial, not_after = format(issued.serial, "x"), issued.not_after
    else:
        fields = {"username": device, "password": secrets.token_urlsafe(24)}
    # The whole bundle is built and checked before the broker's files change.
    doc = _bundle(ws, settings, ca, device, method, fields)
    if method == "password":
        _passwd(["-b", str(settings.password_file), device, doc.password], settings.password_file)
    _table(db)  # outside the transaction: executescript commits
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO device_identities(device, method, serial, issued_at, not_after, "
            "revoked_at) VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT(device) DO UPDATE SET "
            "method=excluded.method, serial=excluded.serial, issued_at=excluded.issued_at, "
            "not_after=excluded.not_after, revoked_at=NULL",
            (device, method, serial, doc.issued_at, not_after),
        )
        db.upsert_device(device)
        db.add_event(
            "device_enrolled",
            f"{device}: {method} identity issued"
            + (f" (certificate serial {serial})" if serial else ""),
            subject=device,
            data={"method": method, "serial": serial},
        )
    write_acl(db, settings)
    # The bundle once the broker files name the device; should the reload fail, the
    # error says so and the bundle works from the operator's manual reload on.
    atomic_write(bundle, doc.to_bytes(), mode=0o600)
    reload_broker(settings)
    return EnrolmentResult(device, method, bundle, doc.broker, serial, not_after)


def _bundle(
    ws: Workspace,
    settings: EnrolmentSettings,
    ca: CertificateAuthority,
    device: str,
    method: str,
    fields: dict[str, Any],
) -> EnrolmentBundle:
    try:
        trusted = ws.public_key_path.read_text()
    except OSError as exc:
        raise EnrolmentError(
            f"cannot read the signing public key {ws.public_key_path}: {exc.strerror}"
        ) from None
    url = settings.password_broker_url if method == "password" else settings.broker_url
    ca_cert = ""
    if url.startswith("mqtts://"):
        ca_file = settings.broker_ca_file
        try:
            ca_cert = ca_file.read_text() if ca_file else ca.cert_pem
        except OSError as exc:
            raise EnrolmentError(f"cannot read broker_ca_file {ca_file}: {exc.strerror}") from None
    doc = EnrolmentBundle(
        device_id=device,
        identity=method,
        broker=url,
        ca_cert=ca_cert,
        trusted_keys=[trusted],
        topic_prefix=settings.prefix,
        issued_at=time.time(),
        **fields,
    )
    try:
        doc.check()
    except BundleError as exc:
        raise EnrolmentError(f"cannot write a usable bundle: {exc}") from None
    return doc


# -- revoke -----------------------------------------------------------------------------


def revoke(ws: Workspace, db: ControlDB, device: str) -> Identity:
    """Revoke ``device``'s identity and its topics, then reload the broker."""
    settings = EnrolmentSettings.for_workspace(ws)
    current = identity(db, device)
    if current is None:
        raise EnrolmentError(f"device {device} has no identity issued by this control node")
    if current.revoked_at is not None:
        raise EnrolmentError(f"device {device} is already revoked")
    if current.method == "certificate" and current.serial:
        try:
            CertificateAuthority(settings.ca_dir).revoke(int(current.serial, 16))
        except CAError as exc:
            raise EnrolmentError(str(exc)) from None
    elif settings.password_file.exists():
        _passwd(["-D", str(settings.password_file), device], settings.password_file)
    now = time.time()
    with db.transaction() as conn:
        conn.execute("UPDATE device_identities SET revoked_at = ? WHERE device = ?", (now, device))
        db.add_event(
            "device_revoked",
            f"{device}: {current.method} identity revoked",
            subject=device,
            data={"method": current.method, "serial": current.serial},
        )
    write_acl(db, settings)
    reload_broker(settings)
    revoked = identity(db, device)
    assert revoked is not None
    return revoked


# -- broker files -----------------------------------------------------------------------


def device_acl(device: str, prefix: str) -> list[str]:
    """The ACL section of one device: its own topics, desired state and artifacts."""
    t = Topics(device, prefix)
    lines = [f"user {device}"]
    lines += [f"topic read {topic}" for topic in (t.predict, t.feedback, t.desired)]
    writes = (t.predictions, t.errors, t.status, t.telemetry, t.samples, t.labels, t.events)
    lines += [f"topic write {topic}" for topic in writes]
    # Replies to apps' response topics (edgeloop_agent.replypolicy's default subtree).
    lines.append(f"topic write {t.replies}")
    lines.append(f"topic read {Topics.every_artifact(prefix)}")
    return lines


def write_acl(db: ControlDB, settings: EnrolmentSettings) -> None:
    """Rewrite the managed block of the ACL file from the enrolled devices.

    Under a lock: two enrolments at once would otherwise each write the block as
    they read it, and the later file could miss the other's device.
    """
    path = settings.acl_file
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write_acl(db, settings, path)


def _write_acl(db: ControlDB, settings: EnrolmentSettings, path: Path) -> None:
    try:
        text = path.read_text() if path.exists() else ""
    except OSError as exc:
        raise EnrolmentError(f"cannot read the ACL file {path}: {exc.strerror}") from None
    if not text:
        text = ACL_TEMPLATE.format(prefix=settings.prefix, begin=BEGIN, end=END)
    head, found, rest = text.partition(BEGIN)
    tail = rest.partition(END)[2] if found else ""
    if not found or END not in rest:
        raise EnrolmentError(
            f"the ACL file {path} has no '{BEGIN}' ... '{END}' block; add those two "
            f"lines where the enrolled devices' sections belong"
        )
    block = [BEGIN]
    for dev in identities(db).values():
        if dev.revoked_at is None:
            block += device_acl(dev.device, settings.prefix)
    block.append(END)
    # 0640: Mosquitto reads it (group mosquitto in production), nobody else needs to.
    atomic_write(path, (head + "\n".join(block) + tail).encode(), mode=0o640)


def _passwd(args: list[str], password_file: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise EnrolmentError("mosquitto_passwd is not installed (Debian: apt install mosquitto)")
    password_file.parent.mkdir(parents=True, exist_ok=True)
    if not password_file.exists():
        # `-c` would truncate a file another device's entry is in; create it empty.
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise EnrolmentError(f"mosquitto_passwd failed: {why[-1] if why else done.returncode}")


def reload_broker(settings: EnrolmentSettings) -> str:
    """Make Mosquitto reread the ACL, password file and CRL (SIGHUP); says how."""
    if settings.broker_pid_file is not None:
        try:
            pid = int(settings.broker_pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise EnrolmentError(
                f"broker files written but the broker was not reloaded "
                f"(pid file {settings.broker_pid_file}: {exc}); reload it by hand"
            ) from None
        return f"SIGHUP to pid {pid}"
    try:
        done = subprocess.run(settings.reload_command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        done = None
        why = str(exc)
    if done is None or done.returncode != 0:
        if done is not None:
            lines = (done.stderr or done.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit status {done.returncode}"
        raise EnrolmentError(
            f"broker files written but `{' '.join(settings.reload_command)}` failed ({why}); "
            f"reload Mosquitto by hand, the change applies only then"
        )
    return " ".join(settings.reload_command)
