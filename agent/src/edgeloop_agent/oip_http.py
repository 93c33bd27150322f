"""The opt-in HTTP front end: Open Inference Protocol v2 on a local address.

Standard library only (``http.server``), in the agent's process. A request is
decoded here (``oip.py``) and queued into the serving loop as a
:class:`LocalRequest`; the handler thread then waits for the loop's reply, so
micro-batching, A/B routing, drift monitors, capture and telemetry are the MQTT
path's. There is no authentication: bind it to loopback (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from edgeloop_agent import __version__, oip
from edgeloop_agent.deployment import Deployment
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.protocol import Code, RequestError
from edgeloop_agent.serving import LocalRequest, Server
from edgeloop_agent.wire.jsontext import json_text

log = logging.getLogger("edgeloop.agent.http")

# Open connections at once (each keep-alive connection holds a thread); beyond,
# a connection gets 503 and is closed. Idle or slow connections are dropped after
# SOCKET_TIMEOUT_S, so a slow client cannot hold a slot for ever.
MAX_CONNECTIONS = 32
SOCKET_TIMEOUT_S = 30.0
# How long a handler waits for the serving loop's reply before answering 504.
REPLY_TIMEOUT_S = 30.0


class _Waiter:
    """The reply slot a handler waits on; filled by the serving thread."""

    __slots__ = ("done", "payload")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.payload: bytes | None = None

    def deliver(self, payload: bytes) -> None:
        self.payload = payload
        self.done.set()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The socketserver default backlog (5) refuses bursts a keep-alive pool opens.
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type, front: OipHttpServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.front = front
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = oip.error_body(oip.BUSY, f"more than {MAX_CONNECTIONS} connections are open")
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"X-Edgeloop-Error: {oip.BUSY}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                request.sendall(head.encode() + body)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response has a Content-Length
    # Headers and body leave in two writes: with Nagle on, the second waits for the
    # client's delayed ACK (measured: 44 ms per request instead of under 1 ms).
    disable_nagle_algorithm = True
    timeout = SOCKET_TIMEOUT_S
    server_version = f"edgeloop-agent/{__version__}"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one journal line per request would flood a small device

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long, unknown
        method) in the protocol's error form instead of its HTML page."""
        self.close_connection = True
        body = oip.error_body(oip.BAD_REQUEST, message or explain or f"HTTP {code}")
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Edgeloop-Error", oip.BAD_REQUEST)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass  # the client is gone

    # -- plumbing ------------------------------------------------------------

    def _send(self, status: int, body: bytes, code: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code is not None:
            self.send_header("X-Edgeloop-Error", code)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":")).encode())

    def _error(self, code: str, message: str) -> None:
        self._send(oip.http_status(code), oip.error_body(code, message), code)

    def _route(self) -> list[str]:
        path = urlsplit(self.path).path
        return [unquote(p) for p in path.split("/") if p]

    # -- GET -------------------------------------------------------------------

    def do_GET(self) -> None:
        try:
            self._get(self._route())
        except Exception:
            log.exception("HTTP GET %s failed", self.path[:200])
            self._error(Code.INTERNAL_ERROR, "the agent failed on this request")

    def _get(self, parts: list[str]) -> None:
        front = self.server.front
        if self.headers.get("Origin") is not None:
            self._error(oip.ORIGIN_REFUSED, _ORIGIN_MESSAGE)
            return
        if parts == ["v2"]:
            self._json(200, {"name": "edgeloop-agent", "version": __version__, "extensions": []})
        elif parts == ["v2", "health", "live"]:
            self._json(200, {"live": True})
        elif parts == ["v2", "health", "ready"]:
            ready = front.ready()
            self._json(200 if ready else 503, {"ready": ready})
        elif len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            name, version, rest = _model_path(parts)
            if rest not in ([], ["ready"]):
                self._error(oip.NOT_FOUND, f"no such resource: {self.path[:200]}")
                return
            try:
                models = front.models(name, version)
            except RequestError as exc:
                if rest == ["ready"]:
                    self._json(oip.http_status(exc.code), {"name": name, "ready": False})
                else:
                    self._error(exc.code, exc.message)
                return
            if rest == ["ready"]:
                self._json(200, {"name": name, "ready": True})
            else:
                self._json(200, oip.model_metadata(name, models))
        else:
            self._error(oip.NOT_FOUND, f"no such resource: {self.path[:200]}")

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body, if any, is not read
        self._error(oip.METHOD_NOT_ALLOWED, f"{self.command} is not served here (GET, POST)")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # -- POST ------------------------------------------------------------------

    def do_POST(self) -> None:
        try:
            self._post(self._route())
        except (TimeoutError, ConnectionError):
            # A client that stalls mid-body (or goes away) gets no answer: its slot is freed.
            log.debug("HTTP client %s stalled or left", self.client_address)
            self.close_connection = True
        except Exception:
            log.exception("HTTP POST %s failed", self.path[:200])
            self.close_connection = True
            self._error(Code.INTERNAL_ERROR, "the agent failed on this request")

    def _post(self, parts: list[str]) -> None:
        front = self.server.front
        if len(parts) < 4 or parts[:2] != ["v2", "models"] or parts[-1] != "infer":
            self.close_connection = True  # the body is not read
            self._error(oip.NOT_FOUND, f"no such resource: {self.path[:200]}")
            return
        name, version, rest = _model_path(parts)
        if rest != ["infer"]:
            self.close_connection = True
            self._error(oip.NOT_FOUND, f"no such resource: {self.path[:200]}")
            return
        if self.headers.get("Origin") is not None:
            # Browsers send Origin with every POST (cross-site, and same-site after a
            # DNS rebinding); OIP clients never do. Refused unread, counted.
            self.close_connection = True
            refused: RequestError | None = RequestError(oip.ORIGIN_REFUSED, _ORIGIN_MESSAGE)
            self._answer(front.submit(None, refused, name, version, None))
            return
        body, refused = self._read_body(front.max_payload)
        if refused is not None:
            # Counted by the serving loop like any refusal; the connection closes
            # because the rest of the body was not read.
            self.close_connection = True
            self._answer(front.submit(None, refused, name, version, None))
            return
        key = self.headers.get("X-Edgeloop-Key")
        try:
            request = oip.parse_infer(
                body, max_bytes=front.max_payload, max_rows=front.max_rows, header_key=key
            )
            front.check_outputs(request.outputs, name, version)
        except RequestError as exc:
            self._answer(front.submit(None, exc, name, version, None))
            return
        self._answer(front.submit(request, None, name, version, request.outputs))

    def _read_body(self, limit: int) -> tuple[bytes, RequestError | None]:
        if self.headers.get("Transfer-Encoding"):
            return b"", RequestError(
                oip.LENGTH_REQUIRED, "send the body with a Content-Length (no chunked encoding)"
            )
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b"", RequestError(oip.LENGTH_REQUIRED, "a Content-Length header is required")
        if not raw.isdigit():
            return b"", RequestError(Code.INVALID_JSON, f"bad Content-Length {json_text(raw[:40])}")
        length = int(raw)
        if length > limit:
            return b"", RequestError(
                Code.PAYLOAD_TOO_LARGE,
                f"payload is {length} bytes, over the {limit}-byte limit",
            )
        return self.rfile.read(length), None

    def _answer(self, outcome: tuple[int, bytes, str | None]) -> None:
        status, body, code = outcome
        self._send(status, body, code)


_ORIGIN_MESSAGE = (
    "requests from web pages (with an Origin header) are refused: this endpoint has no "
    "authentication, and a page the device's browser opens must not reach it"
)


def _model_path(parts: list[str]) -> tuple[str, str | None, list[str]]:
    """``v2/models/{name}[/versions/{version}]/rest...`` -> (name, version, rest)."""
    name = parts[2]
    if len(parts) >= 5 and parts[3] == "versions":
        return name, parts[4], parts[5:]
    return name, None, parts[3:]


class OipHttpServer:
    """OIP v2 over HTTP on ``host:port``, feeding ``server``'s queue."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        server: Server,
        get_deployment: Callable[[], Deployment | None],
        max_payload: int,
        max_rows: int,
    ) -> None:
        self.server = server
        self.get_deployment = get_deployment
        self.max_payload = max_payload
        self.max_rows = max_rows
        self.http = _HTTPServer((host, port), _Handler, self)
        self.address = self.http.server_address
        self.thread = threading.Thread(target=self.http.serve_forever, name="oip-http", daemon=True)

    def start(self) -> OipHttpServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    # -- used by the handlers (their threads) ------------------------------------

    def ready(self) -> bool:
        return self.get_deployment() is not None and self.server.accepting

    def models(self, name: str, version: str | None) -> list[OnnxModel]:
        dep = self.get_deployment()
        if dep is None:
            raise RequestError(Code.NO_MODEL, "no model is loaded on this device yet")
        named = [m for m in dep.models.values() if m.name == name]
        if not named:
            served = ", ".join(sorted({m.name for m in dep.models.values()}))
            raise RequestError(
                "unknown_model", f"model {json_text(name)} is not served here ({served})"
            )
        if version is not None:
            named = [m for m in named if m.version == version]
            if not named:
                raise RequestError(
                    "unknown_version",
                    f"model {json_text(name)} has no version {json_text(version)} here",
                )
        return named

    def check_outputs(self, wanted: list[str] | None, name: str, version: str | None) -> None:
        if wanted is None:
            return
        try:
            models = self.models(name, version)
        except RequestError:
            return  # the serving loop answers that one, on its own snapshot
        oip.check_outputs(wanted, models[0])

    def submit(
        self,
        request: oip.InferRequest | None,
        error: RequestError | None,
        name: str,
        version: str | None,
        wanted: list[str] | None,
    ) -> tuple[int, bytes, str | None]:
        """Through the serving loop and back: (HTTP status, body, error code or None)."""
        waiter = _Waiter()
        item = LocalRequest(
            request.predict if request is not None else None,
            waiter.deliver,
            model_name=name,
            version=version,
            error=error,
        )
        if not self.server.submit_local(item):
            code = Code.SHUTTING_DOWN
            return 503, oip.error_body(code, "the agent is shutting down"), code
        if not waiter.done.wait(REPLY_TIMEOUT_S):
            return 504, oip.error_body(oip.TIMEOUT, "no reply from the serving loop"), oip.TIMEOUT
        assert waiter.payload is not None
        reply = json.loads(waiter.payload)
        err = reply.get("error")
        if err is not None:
            code = err["code"]
            return oip.http_status(code), oip.error_body(code, err["message"]), code
        doc = oip.infer_response(reply, wanted)
        return 200, json.dumps(doc, separators=(",", ":")).encode(), None
