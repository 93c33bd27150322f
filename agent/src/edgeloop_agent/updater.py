"""Desired state -> verified artifacts on disk -> a new deployment, swapped in.

Runs on its own thread so a slow download or a big model load never blocks the
serving loop. Any failure is reported on status and the current deployment
keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop_agent.deployment import Deployment
from edgeloop_agent.desired import DesiredState, DesiredStateError, ModelEntry
from edgeloop_agent.model import ModelLoadError, OnnxModel
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.protocol import artifact_topic
from edgeloop_agent.statedir import ArtifactError, StateDir, StorageError, sha256_hex

log = logging.getLogger("edgeloop.agent.updater")


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
    ) -> None:
        self.prefix = prefix
        self.state = state
        self.require_signature = require_signature or bool(trusted_keys)
        self._keys: list[Any] = []
        if trusted_keys:
            from edgeloop_agent.signature import load_public_keys

            self._keys = load_public_keys(trusted_keys)
        self.artifact_timeout_s = artifact_timeout_s
        self.max_artifact_bytes = max_artifact_bytes
        self.inference_threads = inference_threads
        self.on_deployed = on_deployed
        self.on_failed = on_failed
        self.link: MqttLink | None = None
        self.current: Deployment | None = None
        self.last_seen_revision: int | None = None
        self._latest: bytes | None = None
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._artifacts: dict[str, bytes] = {}
        self._artifact_events: dict[str, threading.Event] = {}
        self._loaded: dict[str, OnnxModel] = {}  # sha256 -> model, reused across swaps

    # -- intake (paho network thread) ----------------------------------------

    def submit_desired(self, payload: bytes) -> None:
        if not payload:
            return  # retained message cleared by the control node
        with self._lock:
            self._latest = payload  # only the newest document matters
        self._wakeup.set()

    def submit_artifact(self, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            event = self._artifact_events.get(msg.topic)
            if event is None:
                return  # not waiting for it (a retained copy after we got it)
            self._artifacts[msg.topic] = msg.payload
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
        except (DesiredStateError, UpdateError, ValueError) as exc:
            log.error("cannot restore the last deployment from %s: %s", self.state.root, exc)
            return None
        log.info("restored deployment revision %d from disk", deployment.revision)
        return deployment

    # -- updater thread ----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wakeup.wait(0.5)
            self._wakeup.clear()
            with self._lock:
                payload, self._latest = self._latest, None
            if payload is not None:
                self.apply(payload)

    def apply(self, payload: bytes) -> Deployment | None:
        try:
            desired = DesiredState.from_payload(payload)
        except DesiredStateError as exc:
            log.error("refused desired state: %s", exc)
            self.on_failed(None, UpdateError(exc.code, str(exc)))
            return None
        self.last_seen_revision = desired.revision
        if self.current is not None and self.current.desired.to_dict() == desired.to_dict():
            return self.current  # already running exactly this
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
            self.on_failed(desired.revision, exc)
            return None
        return deployment

    def _deploy(self, desired: DesiredState, *, fetch: bool) -> Deployment:
        loaded: dict[str, OnnxModel] = {}
        paths: set[Path] = set()
        for entry in desired.models:
            loaded[entry.ref] = self._obtain(entry, fetch=fetch)
            paths.add(self.state.artifact_path(entry.name, entry.version, entry.sha256))
        try:
            deployment = Deployment.build(desired, loaded)
        except (ValueError, KeyError) as exc:
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
        self._verify_signature(entry, data)
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
        topic = artifact_topic(self.prefix, entry.name, entry.version)
        event = threading.Event()
        with self._lock:
            self._artifact_events[topic] = event
            self._artifacts.pop(topic, None)
        self.link.subscribe(topic, qos=1)
        try:
            if not event.wait(self.artifact_timeout_s):
                raise UpdateError(
                    "artifact_timeout",
                    f"no artifact for {entry.ref} on {topic} within {self.artifact_timeout_s:g} s",
                )
            with self._lock:
                data = self._artifacts.pop(topic)
        finally:
            with self._lock:
                self._artifact_events.pop(topic, None)
            self.link.unsubscribe(topic)
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

    def _verify_signature(self, entry: ModelEntry, data: bytes) -> None:
        if not self.require_signature:
            return
        from edgeloop_agent.signature import SignatureError, verify

        try:
            verify(data, entry.signature, self._keys)
        except SignatureError as exc:
            raise UpdateError("artifact_signature_invalid", f"{entry.ref}: {exc}") from None
