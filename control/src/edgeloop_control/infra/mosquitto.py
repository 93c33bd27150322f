"""Launches a private Mosquitto broker process with edgeloop's settings (demo and tests).

This is not an MQTT client (that is :mod:`edgeloop_control.infra.mqtt`): it writes a
config file, starts ``mosquitto`` as a child process on 127.0.0.1 and stops it.

The delivery and persistence settings are those of the shipped
packaging/mosquitto-edgeloop.conf (a test keeps them equal); it has no TLS, no
password file and no ACL, which tests/shipped_broker.py adds for the tests that
need them. Why the settings matter:
Mosquitto's default ``max_inflight_messages 20`` caps QoS 1 delivery to one
subscriber at a few hundred messages/s; ``max_queued_messages`` (default 1000)
silently drops QoS 1 messages beyond it for a slow or offline client.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

BROKER_SETTINGS = """\
# Raised delivery window: the default of 20 in-flight QoS 1 messages per client
# caps throughput at a few hundred messages/s.
max_inflight_messages 0
# Room for bursts and for requests queued while an agent restarts; beyond this
# Mosquitto drops QoS 1 messages for that client.
max_queued_messages 200000
# ... but bounded, so a few offline devices cannot exhaust the broker's memory.
max_queued_bytes 67108864
# Artifacts up to the agent's limit (64 MiB) plus headroom; larger ones are refused.
message_size_limit 41943040
# Persistent sessions and retained desired state survive a broker restart.
persistence true
# Small request/reply messages must not wait for Nagle + delayed ACK (~40 ms).
set_tcp_nodelay true
# Each save writes the whole database (retained artifacts too) and stalls
# delivery meanwhile; SIGTERM always saves.
autosave_interval 60
persistent_client_expiration 14d
"""


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError(
        "mosquitto is not installed; run `make setup` (it installs Debian's mosquitto)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateBroker:
    """A ``mosquitto`` child process on 127.0.0.1 with its own config and data dir.

    ``start()`` launches it and waits until the port accepts connections; ``stop()``
    terminates it (SIGTERM, so the persistence file is saved). Clients connect to
    :attr:`url`.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        data_dir = self.workdir / "data"
        data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(
            # Run as whoever started us: as root, Mosquitto would otherwise switch to
            # the `mosquitto` user and could not write its log or persistence here.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"persistence_location {data_dir}/\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n" + BROKER_SETTINGS
        )
        return self.config_path

    def start(self, timeout: float = 10.0) -> PrivateBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.write_config()
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start-up: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Mosquitto saves its persistence file
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
