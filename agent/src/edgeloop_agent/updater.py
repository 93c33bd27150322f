"""Desired state -> verified artifacts on disk -> a new deployment, swapped in.

Runs on its own thread so a slow download or a big model load never blocks the
serving loop. Any failure, of any kind, is reported on status and the current
deployment keeps serving; the next revision is still applied.

The checks, in order (the update framework's threat model: arbitrary software,
rollback, replay, freeze, mix-and-match, endless data):

1. the message is no bigger than ``max_desired_bytes`` (before parsing);
2. the envelope's signature verifies against a trusted key, over the exact
   payload bytes (unsigned only with ``allow_unsigned`` and no trusted key);
3. the document names this device;
4. its revision is greater than the last one applied (persisted in the state
   directory, so a restart does not reopen the door to replays);
5. it has not expired;
6. every artifact's declared size is within ``max_artifact_bytes`` before its
   topic is subscribed, its received length equals the declared size before it
   is hashed, its sha256 matches, and its signed statement
   ``{name, version, sha256, size}`` verifies before onnxruntime sees a byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop_agent.deployment import Deployment
from edgeloop_agent.model import ModelLoadError, OnnxModel
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.selfupdate import SelfUpdate, SelfUpdateError
from edgeloop_agent.statedir import (
    ArtifactError,
    StateDir,
    StorageError,
    atomic_write,
    sha256_hex,
)
from edgeloop_agent.wire.desired import (
    DEFAULT_MAX_DESIRED_BYTES,
    DesiredState,
    DesiredStateError,
    ModelEntry,
    open_envelope,
)
from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.topics import artifact_topic

log = logging.getLogger("edgeloop.agent.updater")

# The highest revision applied and the digest of its payload, so a restart keeps
# refusing replays and a re-delivered retained copy is recognised as a no-op.
APPLIED_FILE = "applied.json"


class UpdateError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Updater:
    def __init__(
        self,
        *,
        prefix: str,
        state: StateDir,
        trusted_keys: list[Path],
        require_signature: bool,
        artifact_timeout_s: float,
        max_artifact_bytes: int,
        inference_threads: int,
        on_deployed: Callable[[Deployment], None],
        on_failed: Callable[[int | None, UpdateError], None],
        device_id: str | None = None,
        allow_unsigned: bool = False,
        max_desired_bytes: int = DEFAULT_MAX_DESIRED_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self.state = state
        self.device_id = device_id
        self._keys: list[Any] = []
        if trusted_keys:
            from edgeloop_agent.wire.signature import load_public_keys

            self._keys = load_public_keys(trusted_keys)
        # Secure by default: without a trusted key nothing is applied unless the
        # operator said --allow-unsigned.
        self.allow_unsigned = allow_unsigned and not self._keys and not require_signature
        self.require_signature = not self.allow_unsigned
        self.artifact_timeout_s = artifact_timeout_s
        self.max_artifact_bytes = max_artifact_bytes
        self.max_desired_bytes = max_desired_bytes
        self.inference_threads = inference_threads
        self.on_deployed = on_deployed
        self.on_failed = on_failed
        self.clock = clock
        self.link: MqttLink | None = None
        self.current: Deployment | None = None
        self.last_seen_revision: int | None = None
        self.last_beat = time.monotonic()
        self._latest: bytes | None = None
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._artifacts: dict[str, bytes | None] = {}
        self._artifact_sizes: dict[str, int | None] = {}
        self._artifact_events: dict[str, threading.Event] = {}
        self._loaded: dict[str, OnnxModel] = {}  # sha256 -> model, reused across swaps
        self.self_update: SelfUpdate | None = None  # the agent package half (selfupdate.py)
        self.applied_revision, self._applied_digest = self._load_applied()

    # -- intake (paho network thread) ----------------------------------------

    def submit_desired(self, payload: bytes) -> None:
        if not payload:
            return  # retained message cleared by the control node
        with self._lock:
            self._latest = payload  # only the newest document matters
        self._wakeup.set()

    def submit_artifact(self, msg: mqtt.MQTTMessage) -> None:
        if self.self_update is not None and self.self_update.is_chunk_topic(msg.topic):
            self.self_update.submit_chunk(msg)
            return
        with self._lock:
            event = self._artifact_events.get(msg.topic)
            if event is None:
                return  # not waiting for it (a retained copy after we got it)
            expected = self._artifact_sizes.get(msg.topic)
            # Keep no reference to a payload of the wrong length: paho already
            # holds it once, the updater need not hold it twice.
            ok = expected is None or len(msg.payload) == expected
            # bytes() returns a bytes payload itself (no copy); paho types it bytes | bytearray.
            self._artifacts[msg.topic] = bytes(msg.payload) if ok else None
            if not ok:
                self._artifact_sizes[msg.topic] = -len(msg.payload)
        event.set()

    def is_artifact_topic(self, topic: str) -> bool:
        return topic.startswith(f"{self.prefix}/models/")

    # -- start-up --------------------------------------------------------------

    def restore(self) -> Deployment | None:
        """Serve the last good deployment from disk, before any broker contact."""
        doc = self.state.load_deployment()
        if doc is None:
            return None
        try:
            desired = DesiredState.from_dict(doc)
            deployment = self._deploy(desired, fetch=False)
        except Exception as exc:  # a bad file on disk must never stop the agent
            log.error("cannot restore the last deployment from %s: %s", self.state.root, exc)
            return None
        if self.applied_revision is None or deployment.revision > self.applied_revision:
            self.applied_revision = deployment.revision  # older state dirs lack applied.json
        log.info("restored deployment revision %d from disk", deployment.revision)
        return deployment

    # -- updater thread ----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.last_beat = time.monotonic()
            self._wakeup.wait(0.5)
            self._wakeup.clear()
            with self._lock:
                payload, self._latest = self._latest, None
            if payload is None:
                continue
            try:
                self.apply(payload)
            except Exception as exc:  # one document must never end the update path
                log.exception("desired state could not be processed")
                self._fail(None, UpdateError("update_failed", f"{type(exc).__name__}: {exc}"))

    def apply(self, payload: bytes) -> Deployment | None:
        try:
            desired, digest = self._check(payload)
        except DesiredStateError as exc:
            log.error("refused desired state: %s", exc)
            self._fail(getattr(exc, "revision", None), UpdateError(exc.code, str(exc)))
            return None
        if desired is None:
            return self.current  # a re-delivered copy of what is already applied
        self.last_seen_revision = desired.revision
        try:
            deployment = self._deploy(desired, fetch=True)
        except StorageError as exc:
            # A full or read-only state disk: the swap is refused (the new model would not
            # survive a restart) and the current deployment keeps serving.
            log.error("desired revision %d not applied: %s", desired.revision, exc)
            self.on_failed(desired.revision, UpdateError(exc.code, str(exc)))
            return None
        except UpdateError as exc:
            log.error("desired revision %d not applied: %s", desired.revision, exc.message)
            self._fail(desired.revision, exc)
            return None
        except Exception as exc:  # onnxruntime, the router, the disk: report, keep serving
            log.exception("desired revision %d not applied", desired.revision)
            self._fail(
                desired.revision, UpdateError("update_failed", f"{type(exc).__name__}: {exc}")
            )
            return None
        self._save_applied(desired.revision, digest)
        self._agent_package(desired, payload)
        return deployment

    def _agent_package(self, desired: DesiredState, envelope: bytes) -> None:
        if self.self_update is None or self.link is None:
            return
        link = self.link

        def beat() -> None:
            self.last_beat = time.monotonic()

        try:
            self.self_update.handle(
                desired.agent,
                envelope,
                subscribe=lambda topic: link.subscribe(topic, qos=1),
                unsubscribe=link.unsubscribe,
                beat=beat,
            )
        except SelfUpdateError as exc:
            log.error("agent package not requested: %s", exc.message)
            self._fail(desired.revision, UpdateError(exc.code, exc.message))
        except OSError as exc:  # the spool: a full disk is reported, serving goes on
            log.error("agent package not requested: %s", exc)
            self._fail(desired.revision, UpdateError("agent_package_write_failed", str(exc)))

    def _check(self, raw: bytes) -> tuple[DesiredState | None, str]:
        opened = open_envelope(
            raw,
            keys=self._keys,
            allow_unsigned=self.allow_unsigned,
            max_bytes=self.max_desired_bytes,
        )
        digest = hashlib.sha256(opened.payload).hexdigest()
        desired = DesiredState.from_payload(opened.payload)
        signed = opened.keyid is not None

        def refuse(message: str, code: str) -> DesiredStateError:
            exc = DesiredStateError(message, code)
            exc.revision = desired.revision  # type: ignore[attr-defined]
            return exc

        if desired.device != self.device_id and (signed or desired.device is not None):
            raise refuse(
                f"desired state is for device {json_text(desired.device)}, "
                f"this is {json_text(self.device_id)}",
                "desired_wrong_device",
            )
        applied = self.applied_revision
        if applied is not None:
            if desired.revision == applied and digest == self._applied_digest:
                return None, digest
            if desired.revision <= applied:
                raise refuse(
                    f"desired revision {desired.revision} is not newer than revision {applied} "
                    "already applied: a replayed or rolled-back document",
                    "desired_replayed",
                )
        if signed and desired.expires is None:
            raise refuse("signed desired state has no 'expires'", "invalid_desired_state")
        if desired.expires is not None and desired.expires <= self.clock():
            raise refuse(
                f"desired revision {desired.revision} expired at {desired.expires:.0f} "
                "(Unix time); the last good deployment keeps serving",
                "desired_expired",
            )
        for entry in desired.models:
            if self.require_signature and entry.size is None:
                raise refuse(f"{entry.ref} has no declared size", "invalid_desired_state")
            if entry.size is not None and entry.size > self.max_artifact_bytes:
                raise refuse(
                    f"{entry.ref} declares {entry.size} bytes, over the "
                    f"{self.max_artifact_bytes}-byte artifact limit",
                    "artifact_too_large",
                )
        return desired, digest

    def _fail(self, revision: int | None, exc: UpdateError) -> None:
        try:
            self.on_failed(revision, exc)
        except Exception:
            log.exception("could not report the failed update")

    def expired(self) -> bool:
        """True when the deployment being served has passed its document's expiry."""
        dep = self.current
        return bool(dep and dep.desired.expires is not None and dep.desired.expires <= self.clock())

    # -- applied revision ------------------------------------------------------

    def _load_applied(self) -> tuple[int | None, str | None]:
        path = self.state.root / APPLIED_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            revision, digest = doc["revision"], doc.get("sha256")
            if isinstance(revision, int) and not isinstance(revision, bool):
                return revision, digest if isinstance(digest, str) else None
            log.error("ignoring %s: revision is not an integer", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %s", path, exc)
        return None, None

    def _save_applied(self, revision: int, digest: str) -> None:
        self.applied_revision, self._applied_digest = revision, digest
        data = json.dumps({"revision": revision, "sha256": digest}).encode()
        atomic_write(self.state.root / APPLIED_FILE, data)

    # -- deployment -------------------------------------------------------------

    def _deploy(self, desired: DesiredState, *, fetch: bool) -> Deployment:
        loaded: dict[str, OnnxModel] = {}
        paths: set[Path] = set()
        for entry in desired.models:
            loaded[entry.ref] = self._obtain(entry, fetch=fetch)
            paths.add(self.state.artifact_path(entry.name, entry.version, entry.sha256))
        try:
            deployment = Deployment.build(desired, loaded)
        except (ValueError, KeyError, TypeError) as exc:
            raise UpdateError(
                "invalid_allocation", f"cannot route this deployment: {exc}"
            ) from None
        self.state.save_deployment(desired.to_dict())
        self.current = deployment
        self._loaded = {m.sha256: m for m in loaded.values()}
        self.on_deployed(deployment)
        self.state.prune(paths)
        return deployment

    def _obtain(self, entry: ModelEntry, *, fetch: bool) -> OnnxModel:
        cached = self._loaded.get(entry.sha256)
        if cached is not None and cached.name == entry.name and cached.version == entry.version:
            self._verify_signature(entry)
            return cached
        fetched = False
        if self.state.has_artifact(entry.name, entry.version, entry.sha256):
            try:
                data = self.state.read_artifact(entry.name, entry.version, entry.sha256)
            except ArtifactError as exc:
                if not fetch:
                    raise UpdateError(exc.code, str(exc)) from None
                data, fetched = self._fetch(entry), True
        elif fetch:
            data, fetched = self._fetch(entry), True
        else:
            raise UpdateError("artifact_missing", f"{entry.ref} is not in the state directory")
        if entry.size is not None and len(data) != entry.size:
            raise UpdateError(
                "artifact_size_mismatch",
                f"{entry.ref} is {len(data)} bytes, desired state says {entry.size}",
            )
        self._verify_signature(entry)
        try:
            model = OnnxModel(
                data,
                name=entry.name,
                version=entry.version,
                sha256=entry.sha256,
                threads=self.inference_threads,
            )
        except ModelLoadError as exc:
            raise UpdateError("model_load_failed", str(exc)) from None
        if fetched:
            # Only a verified, loadable artifact earns a place on disk.
            self.state.store_artifact(entry.name, entry.version, entry.sha256, data)
        return model

    def _fetch(self, entry: ModelEntry) -> bytes:
        if self.link is None:
            raise UpdateError("no_broker", f"cannot fetch {entry.ref}: no broker connection")
        if entry.size is not None and entry.size > self.max_artifact_bytes:
            raise UpdateError(  # checked before subscribing: never receive it at all
                "artifact_too_large",
                f"{entry.ref} declares {entry.size} bytes, over the "
                f"{self.max_artifact_bytes}-byte limit",
            )
        topic = artifact_topic(self.prefix, entry.name, entry.version)
        event = threading.Event()
        with self._lock:
            self._artifact_events[topic] = event
            self._artifact_sizes[topic] = entry.size
            self._artifacts.pop(topic, None)
        self.link.subscribe(topic, qos=1)
        try:
            deadline = time.monotonic() + self.artifact_timeout_s
            # Waiting in slices keeps the heartbeat going: a slow download is not a
            # stuck thread, but a thread that never returns from here would be.
            while not event.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                self.last_beat = time.monotonic()
                if time.monotonic() >= deadline:
                    raise UpdateError(
                        "artifact_timeout",
                        f"no artifact for {entry.ref} on {topic} within "
                        f"{self.artifact_timeout_s:g} s",
                    )
            with self._lock:
                data = self._artifacts.pop(topic)
                received = self._artifact_sizes.get(topic)
        finally:
            with self._lock:
                self._artifact_events.pop(topic, None)
                self._artifact_sizes.pop(topic, None)
            self.link.unsubscribe(topic)
        if data is None:
            raise UpdateError(
                "artifact_size_mismatch",
                f"{entry.ref} is {-(received or 0)} bytes, desired state says {entry.size}",
            )
        if len(data) > self.max_artifact_bytes:
            raise UpdateError(
                "artifact_too_large",
                f"{entry.ref} is {len(data)} bytes, over the {self.max_artifact_bytes}-byte limit",
            )
        if entry.size is not None and len(data) != entry.size:
            raise UpdateError(
                "artifact_size_mismatch",
                f"{entry.ref} is {len(data)} bytes, desired state says {entry.size}",
            )
        actual = sha256_hex(data)
        if actual != entry.sha256:
            raise UpdateError(
                "artifact_sha256_mismatch",
                f"artifact {entry.ref} has sha256 {actual}, desired state says {entry.sha256}",
            )
        return data

    def _verify_signature(self, entry: ModelEntry) -> None:
        """The signed statement binds name, version, sha256 and size together.

        The bytes themselves were already matched against ``entry.sha256`` and
        ``entry.size``, so verifying the statement verifies the artifact.
        """
        if not self.require_signature:
            return
        from edgeloop_agent.wire.signature import SignatureError, artifact_statement, verify_any

        if entry.size is None:
            raise UpdateError("artifact_signature_invalid", f"{entry.ref}: no declared size")
        if not entry.signature:
            raise UpdateError(
                "artifact_signature_invalid",
                f"{entry.ref}: artifact has no signature; refusing to load an unsigned model",
            )
        statement = artifact_statement(entry.name, entry.version, entry.sha256, entry.size)
        try:
            verify_any(statement, [(None, entry.signature)], self._keys)
        except SignatureError as exc:
            raise UpdateError(
                "artifact_signature_invalid",
                f"{entry.ref}: signature does not cover this name, version and content: {exc}",
            ) from None
