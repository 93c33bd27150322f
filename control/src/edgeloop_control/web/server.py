"""Run the HTTP app beside the daemon: uvicorn in a thread of the same process."""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path

import uvicorn

from edgeloop_agent.wire.network import parse_listen as listen_address
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.web.app import create_app

log = logging.getLogger("edgeloop.control.http")


def parse_listen(value: str, *, token: bool = False) -> tuple[str, int]:
    """``127.0.0.1:8765`` -> (host, port); a non-loopback address only with a token."""
    host, port = listen_address(value, "--http")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ValueError(
            f"--http {value!r}: a non-loopback address requires an operator token "
            "([http] token or token_file in edgeloop.toml; see docs/operations.md)"
        )
    return host, port


class HttpServer:
    def __init__(
        self,
        db_path: str | Path,
        listen: str,
        *,
        ws: Workspace | None = None,
        token: str | None = None,
        broker: str | None = None,
    ) -> None:
        host, port = parse_listen(listen, token=token is not None)
        self.app = create_app(db_path, ws=ws, token=token, broker=broker)
        config = uvicorn.Config(
            self.app, host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        # Signals belong to the daemon's main thread.
        self.server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]
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
        log.info("HTTP on http://%s (dashboard, /metrics, /healthz)", self.listen)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
