"""Run the HTTP app beside the daemon: uvicorn in a thread of the same process."""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

import uvicorn

from edgeloop_control.web.app import create_app

log = logging.getLogger("edgeloop.control.http")


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:8765`` -> (host, port); only loopback until the dashboard has auth."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http {value!r} must be HOST:PORT, e.g. 127.0.0.1:8765")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(
            f"--http {value!r}: only a loopback address is allowed (it has no authentication); "
            "put a reverse proxy with TLS and authentication in front to reach it remotely"
        )
    return host, int(port)


class HttpServer:
    def __init__(self, db_path: Path, listen: str) -> None:
        host, port = parse_listen(listen)
        config = uvicorn.Config(
            create_app(db_path), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        # Signals belong to the daemon's main thread.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.listen = f"{host}:{port}"

    def start(self, timeout: float = 10.0) -> HttpServer:
        self.thread.start()
        waited = 0.0
        while not self.server.started and self.thread.is_alive() and waited < timeout:
            threading.Event().wait(0.05)
            waited += 0.05
        if not self.server.started:
            raise OSError(f"the HTTP server did not start on {self.listen} (port in use?)")
        log.info("HTTP on http://%s (/metrics, /healthz)", self.listen)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
