"""The agent updates itself: the unprivileged half.

When a verified desired document names an agent package (wire/agentpackage.py)
other than the one running, the agent fetches its chunks from the broker into
``{state}/update/``, checks size and sha256 against the signed document, and
writes ``request.json`` beside the package. It installs nothing: a path unit
(``edgeloop-agent-update.path``) starts the root one-shot
(``edgeloop-agent-update.service``, packaging/edgeloop-agent-update), which
re-verifies the signed document itself (``edgeloop_agent.selfinstall``),
installs the package, restarts the agent and reinstalls the previous package
when the new agent does not become ready in time. It reports back in
``result.json`` in the same directory, which this module reads for status.

The agent's sandbox is unchanged: it only ever writes its own state directory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop_agent import __version__
from edgeloop_agent.statedir import atomic_write, private_dir
from edgeloop_agent.wire.agentpackage import AgentPackage, chunk_filter

log = logging.getLogger("edgeloop.agent.selfupdate")

REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
# Set by the packaged unit (packaging/build-deb.sh): the Debian version, which the
# Python version (__version__) does not carry (0.1.0 vs 0.1.0+upgrade1).
VERSION_ENV = "EDGELOOP_AGENT_PACKAGE_VERSION"
_DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}
# The one-shot's verdicts after which the same package is not asked for again.
_GAVE_UP = ("rolled_back", "failed")


def package_version() -> str:
    return os.environ.get(VERSION_ENV) or __version__


def dpkg_architecture() -> str:
    machine = platform.machine()
    return _DPKG_ARCH.get(machine, machine)


class SelfUpdateError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Download:
    package: AgentPackage
    fd: int
    prefix: str
    received: set[int] = field(default_factory=set)
    error: SelfUpdateError | None = None
    done: threading.Event = field(default_factory=threading.Event)
    last_chunk: float = field(default_factory=time.monotonic)


class SelfUpdate:
    """Fetch, verify and hand over an agent package; report what became of it."""

    def __init__(
        self,
        *,
        prefix: str,
        spool: Path,
        chunk_timeout_s: float,
        version: str | None = None,
        architecture: str | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.prefix = prefix
        self.spool = spool
        self.chunk_timeout_s = chunk_timeout_s
        self.version = version or package_version()
        self.architecture = architecture or dpkg_architecture()
        self.on_change = on_change  # publishes status: each step is reported
        self.refused = 0  # packages refused here (size, sha256, architecture, timeout)
        self._state: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._download: _Download | None = None
        self._result_seen = self._result_stamp()
        remove_partial(spool)

    # -- chunks (paho network thread) -----------------------------------------

    def is_chunk_topic(self, topic: str) -> bool:
        return topic.startswith(f"{self.prefix}/models/_agent/")

    def submit_chunk(self, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            dl = self._download
            if dl is None or not msg.topic.startswith(dl.prefix) or dl.done.is_set():
                return  # not waiting for it (a retained copy after the download)
            pkg = dl.package
            tail = msg.topic[len(dl.prefix) :]
            index = int(tail) if tail.isdigit() and len(tail) < 7 else -1
            if not 0 <= index < pkg.chunks:
                return  # not a chunk of this package: ignored, the timeout decides
            if index in dl.received:
                return
            if len(msg.payload) != pkg.chunk_length(index):
                dl.error = SelfUpdateError(
                    "agent_package_size_mismatch",
                    f"chunk {index} of agent package {pkg.version} is {len(msg.payload)} bytes, "
                    f"the signed document says {pkg.chunk_length(index)}",
                )
                dl.done.set()
                return
            try:
                # One chunk at a time goes to disk: memory stays at one chunk.
                os.pwrite(dl.fd, msg.payload, index * pkg.chunk_size)
            except OSError as exc:
                dl.error = SelfUpdateError("agent_package_write_failed", f"{self.spool}: {exc}")
                dl.done.set()
                return
            dl.received.add(index)
            dl.last_chunk = time.monotonic()
            if len(dl.received) == pkg.chunks:
                dl.done.set()

    # -- the updater thread ----------------------------------------------------

    def handle(
        self,
        package: AgentPackage | None,
        envelope: bytes,
        *,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        beat: Callable[[], None],
    ) -> None:
        """Request ``package`` if it is not the one running; raises SelfUpdateError."""
        if package is None or package.version == self.version:
            return
        result = self.result()
        if result and result.get("sha256") == package.sha256 and result.get("state") in _GAVE_UP:
            return  # tried and rolled back: not again until the control node names another
        if self._pending() == package.sha256:
            return
        try:
            if package.architecture != self.architecture:
                raise SelfUpdateError(
                    "agent_package_wrong_architecture",
                    f"agent package {package.version} is for {package.architecture}, "
                    f"this device is {self.architecture}",
                )
            self._set_state("downloading", package)
            path = self._fetch(package, subscribe, unsubscribe, beat)
            request = {
                "version": package.version,
                "architecture": package.architecture,
                "sha256": package.sha256,
                "size": package.size,
                "file": path.name,
                "previous": self.version,
                # The one-shot trusts nothing the agent says: it verifies this signed
                # document itself and checks the package against it.
                "envelope": base64.b64encode(envelope).decode("ascii"),
                "ts": time.time(),
            }
            atomic_write(self.spool / REQUEST_FILE, json.dumps(request).encode())
        except SelfUpdateError as exc:
            self.refused += 1
            self._set_state("refused", package, reason=exc.message, code=exc.code)
            raise
        log.info("agent package %s verified; installation requested", package.version)
        self._set_state("requested", package)

    def _fetch(
        self,
        pkg: AgentPackage,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        beat: Callable[[], None],
    ) -> Path:
        private_dir(self.spool)
        final = self.spool / pkg.filename
        if final.is_file() and _file_sha256(final) == pkg.sha256:
            return final  # downloaded before (a restart between download and request)
        for stale in self.spool.glob("*.deb"):
            stale.unlink(missing_ok=True)  # one package in the spool at a time
        part = self.spool / f".{pkg.sha256[:16]}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        topic = chunk_filter(self.prefix, pkg.sha256)
        dl = _Download(pkg, fd, topic[:-1])
        with self._lock:
            self._download = dl
        try:
            self._receive(dl, topic, subscribe, unsubscribe, beat)
            actual = _file_sha256(part)
            if actual != pkg.sha256:
                raise SelfUpdateError(
                    "agent_package_sha256_mismatch",
                    f"agent package {pkg.version} has sha256 {actual}, "
                    f"the signed document says {pkg.sha256}",
                )
            os.replace(part, final)
        finally:
            part.unlink(missing_ok=True)  # nothing half-fetched or refused stays
        return final

    def _receive(
        self,
        dl: _Download,
        topic: str,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        beat: Callable[[], None],
    ) -> None:
        pkg, fd = dl.package, dl.fd
        subscribe(topic)
        try:
            # The timeout runs from the last chunk received: a slow link that keeps
            # delivering is not a dead one.
            while not dl.done.wait(1.0):
                beat()
                if time.monotonic() - dl.last_chunk > self.chunk_timeout_s:
                    raise SelfUpdateError(
                        "agent_package_timeout",
                        f"agent package {pkg.version}: {len(dl.received)} of {pkg.chunks} "
                        f"chunks on {topic}, none for {self.chunk_timeout_s:g} s",
                    )
            if dl.error is not None:
                raise dl.error
            os.fsync(fd)
        finally:
            with self._lock:
                self._download = None
            unsubscribe(topic)
            os.close(fd)

    # -- status ----------------------------------------------------------------

    def _pending(self) -> str | None:
        try:
            doc = json.loads((self.spool / REQUEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        sha = doc.get("sha256") if isinstance(doc, dict) else None
        return sha if isinstance(sha, str) else None

    def _result_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.spool / RESULT_FILE).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def result_changed(self) -> bool:
        """True once each time the one-shot rewrites its result (checked every second:
        it may say "done" after this agent started and published its status)."""
        stamp = self._result_stamp()
        if stamp == self._result_seen:
            return False
        self._result_seen = stamp
        return True

    def result(self) -> dict[str, Any] | None:
        """What the one-shot wrote last, or None."""
        try:
            doc = json.loads((self.spool / RESULT_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return {"state": "unknown", "reason": f"unreadable {RESULT_FILE}: {exc}"}
        return doc if isinstance(doc, dict) else None

    def _set_state(self, state: str, pkg: AgentPackage, **extra: Any) -> None:
        self._state = {
            "state": state,
            "version": pkg.version,
            "sha256": pkg.sha256,
            "ts": time.time(),
            **extra,
        }
        try:
            self.on_change()
        except Exception:  # offline: the next status carries the state anyway
            log.debug("self-update state not published", exc_info=True)

    def status(self) -> dict[str, Any]:
        """``agent_update`` on status: this agent's own step, or the one-shot's verdict
        when that is newer (the one-shot restarts the agent, so after an upgrade or a
        rollback the result file is all there is)."""
        own, result = self._state, self.result()
        latest = own
        if result is not None and (own is None or _ts(result) >= _ts(own)):
            latest = {k: result.get(k) for k in ("state", "version", "sha256", "reason", "ts")}
        doc: dict[str, Any] = {
            "running": self.version,
            "architecture": self.architecture,
            "refused": self.refused,
        }
        if latest is not None:
            doc.update(latest)
        else:
            doc["state"] = "idle"
        return doc


def _ts(doc: dict[str, Any]) -> float:
    ts = doc.get("ts")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0.0


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_partial(spool: Path) -> None:
    """Drop a half-fetched package a crash or a kill left behind (at start-up)."""
    if not spool.is_dir():
        return
    for stale in spool.glob(".*.part"):
        with contextlib.suppress(OSError):
            stale.unlink()
