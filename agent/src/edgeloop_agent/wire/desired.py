"""Desired state: which model versions a device should run, and how.

The control node publishes one retained document per device on
``{prefix}/{device}/desired``: a signed envelope around the document (see
``signature.py`` and docs/protocol.md for the schema). The control node seals
it with :func:`seal_envelope`; the agent opens it with :func:`open_envelope` and
parses it with :meth:`DesiredState.from_payload`. Everything opened is hostile
input until proven otherwise: every defect is a :class:`DesiredStateError` with a
code and a message, never another exception type.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeloop_agent.wire.agentpackage import AgentPackage, AgentPackageError
from edgeloop_agent.wire.jsontext import clip, json_text
from edgeloop_agent.wire.names import check_model_name, id_problem, utf8_problem
from edgeloop_agent.wire.signature import (
    DESIRED_PAYLOAD_TYPE,
    SignatureError,
    canonical_json,
    desired_message,
    verify_any,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_SHA256 = re.compile(r"[0-9a-f]{64}")
# A weight is a share of traffic; anything beyond this is a typo or an attack
# (float() of a 401-digit integer raises OverflowError).
MAX_WEIGHT = 1e9
MAX_MODELS = 64
MAX_TEXT = 200
DEFAULT_MAX_DESIRED_BYTES = 256 * 1024


class DesiredStateError(ValueError):
    """A desired-state document the agent refuses (reported on status)."""

    def __init__(self, message: str, code: str = "invalid_desired_state") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Opened:
    """The verified payload of an envelope; ``keyid`` is None when it was not signed."""

    payload: bytes
    keyid: str | None


def open_envelope(
    raw: bytes,
    *,
    keys: Sequence[Ed25519PublicKey],
    allow_unsigned: bool,
    max_bytes: int = DEFAULT_MAX_DESIRED_BYTES,
) -> Opened:
    """Check size and signature of a desired-state message; return the signed bytes.

    Nothing of the document is parsed before its signature checks out, except
    the envelope itself (three fields). An unsigned document (a bare JSON
    object, or an envelope without a valid signature) is accepted only with
    ``allow_unsigned``, and then only when no trusted key is configured.
    """
    if len(raw) > max_bytes:
        raise DesiredStateError(
            f"desired state is {len(raw)} bytes, over the {max_bytes}-byte limit",
            "desired_too_large",
        )
    data = _loads(raw)
    if not isinstance(data, dict):
        raise DesiredStateError("desired state must be a JSON object")
    if "payload" not in data:
        if keys or not allow_unsigned:
            raise DesiredStateError(
                "desired state is not signed; this agent only applies documents signed by "
                "the control node" + ("" if keys else " (no --trusted-key, no --allow-unsigned)"),
                "desired_unsigned",
            )
        return Opened(raw, None)
    payload_type, payload_b64 = data.get("payloadType"), data.get("payload")
    if payload_type != DESIRED_PAYLOAD_TYPE:
        raise DesiredStateError(
            f"envelope payloadType must be {json_text(DESIRED_PAYLOAD_TYPE)}, "
            f"got {json_text(payload_type)}"
        )
    if not isinstance(payload_b64, str):
        raise DesiredStateError("envelope payload must be base64 text")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise DesiredStateError("envelope payload is not valid base64") from None
    sigs = data.get("signatures")
    pairs: list[tuple[str | None, str]] = []
    if isinstance(sigs, list):
        for item in sigs:
            if isinstance(item, dict) and isinstance(item.get("sig"), str):
                kid = item.get("keyid")
                pairs.append((kid if isinstance(kid, str) else None, item["sig"]))
    if not keys:
        if not allow_unsigned:
            raise DesiredStateError(
                "no trusted key configured and --allow-unsigned not given: refusing every "
                "desired state",
                "desired_unsigned",
            )
        return Opened(payload, None)
    try:
        keyid = verify_any(desired_message(payload), pairs, keys)
    except SignatureError as exc:
        raise DesiredStateError(
            f"desired state signature invalid: {exc}", "desired_signature_invalid"
        ) from None
    return Opened(payload, keyid)


def seal_envelope(payload: bytes, signatures: Sequence[tuple[str, str]]) -> bytes:
    """The envelope :func:`open_envelope` accepts, around canonical document bytes.

    ``signatures`` are ``(keyid, base64 signature of desired_message(payload))`` pairs,
    one per signing key (several during a key rotation's overlap).
    """
    envelope = {
        "payloadType": DESIRED_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": kid, "sig": sig} for kid, sig in signatures],
    }
    return canonical_json(envelope)


def peek_document(raw: bytes) -> Any:
    """The document inside a message, NOT verified: for display and tests only."""
    data = json.loads(raw)
    if isinstance(data, dict) and "payload" in data:
        return json.loads(base64.b64decode(data["payload"]))
    return data


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise DesiredStateError("desired state is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DesiredStateError(f"desired state is not valid JSON: {clip(str(exc))}") from None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    sha256: str
    size: int | None
    signature: str | None
    role: str  # "serve" (takes traffic by weight) or "shadow" (runs, never answers)
    weight: float
    variant: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "signature": self.signature,
            "role": self.role,
            "weight": self.weight,
            "variant": self.variant,
        }


@dataclass(frozen=True)
class DesiredState:
    revision: int
    experiment: str | None
    models: tuple[ModelEntry, ...]
    allocation: dict[str, Any] | None
    settings: dict[str, Any]
    # The device this document is for (mix-and-match: another device's signed
    # document is refused) and when it stops being valid (freeze attack),
    # in Unix seconds. Both are required in signed documents.
    device: str | None = None
    expires: float | None = None
    # The agent package this device should run (wire/agentpackage.py), or None:
    # no change asked for.
    agent: AgentPackage | None = None

    @property
    def serving(self) -> list[ModelEntry]:
        return [m for m in self.models if m.role == "serve"]

    @property
    def shadows(self) -> list[ModelEntry]:
        return [m for m in self.models if m.role == "shadow"]

    def to_dict(self) -> dict[str, Any]:
        doc = {
            "revision": self.revision,
            "experiment": self.experiment,
            "models": [m.to_dict() for m in self.models],
            "allocation": self.allocation,
            "settings": self.settings,
            "device": self.device,
            "expires": self.expires,
        }
        if self.agent is not None:
            doc["agent"] = self.agent.to_dict()
        return doc

    @classmethod
    def from_payload(cls, payload: bytes) -> DesiredState:
        return cls.from_dict(_loads(payload))

    @classmethod
    def from_dict(cls, data: Any) -> DesiredState:
        if not isinstance(data, dict):
            raise DesiredStateError("desired state must be a JSON object")
        revision = data.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or not 0 <= revision < 2**63:
            raise DesiredStateError(
                "desired state 'revision' must be a non-negative integer, "
                f"got {json_text(revision)}"
            )
        device = data.get("device")
        if device is not None and id_problem(device, reserved=False):
            raise DesiredStateError(f"'device' {json_text(device)} {id_problem(device)}")
        expires = data.get("expires")
        if expires is not None and (
            isinstance(expires, bool)
            or not isinstance(expires, (int, float))
            or not 0 <= expires < 1e11
        ):
            raise DesiredStateError(f"'expires' must be Unix seconds, got {json_text(expires)}")
        experiment = data.get("experiment")
        if experiment is not None and (
            not isinstance(experiment, str)
            or not experiment
            or len(experiment) > MAX_TEXT
            or utf8_problem(experiment)
        ):
            raise DesiredStateError(
                f"'experiment' must be a non-empty string, got {json_text(experiment)}"
            )
        raw_models = data.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise DesiredStateError("desired state 'models' must be a non-empty list")
        if len(raw_models) > MAX_MODELS:
            raise DesiredStateError(
                f"desired state lists {len(raw_models)} models; at most {MAX_MODELS}"
            )
        models = tuple(_entry(i, m) for i, m in enumerate(raw_models))
        variants = [m.variant for m in models]
        dupes = sorted({v for v in variants if variants.count(v) > 1})
        if dupes:
            raise DesiredStateError(f"desired state repeats variants: {', '.join(dupes)}")
        refs = [m.ref for m in models]
        dupes = sorted({r for r in refs if refs.count(r) > 1})
        if dupes:
            raise DesiredStateError(
                f"desired state lists a model version twice: {', '.join(dupes)}"
            )
        serving = [m for m in models if m.role == "serve"]
        if not serving:
            raise DesiredStateError("desired state has no serving model (only shadows)")
        total = sum(m.weight for m in serving)
        if total <= 0:
            raise DesiredStateError("serving weights sum to 0; at least one must be positive")
        allocation = data.get("allocation")
        if allocation is not None and not isinstance(allocation, dict):
            raise DesiredStateError("'allocation' must be an object or null")
        settings = data.get("settings") or {}
        if not isinstance(settings, dict):
            raise DesiredStateError("'settings' must be an object")
        return cls(
            revision,
            experiment,
            models,
            allocation,
            settings,
            device,
            float(expires) if expires is not None else None,
            _agent(data.get("agent")),
        )


def _agent(item: Any) -> AgentPackage | None:
    if item is None:
        return None
    try:
        return AgentPackage.from_dict(item)
    except AgentPackageError as exc:
        raise DesiredStateError(str(exc), "invalid_agent_package") from None


def _entry(index: int, item: Any) -> ModelEntry:
    where = f"models[{index}]"
    if not isinstance(item, dict):
        raise DesiredStateError(f"{where} must be an object")
    try:
        # fullmatch, shared with the control node: a trailing newline is refused.
        name = check_model_name(f"{where}.name", item.get("name"))
        version = check_model_name(f"{where}.version", item.get("version"))
    except ValueError as exc:
        raise DesiredStateError(str(exc)) from None
    sha = item.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise DesiredStateError(
            f"{where}.sha256 must be 64 lowercase hex digits, got {json_text(sha)}"
        )
    size = item.get("size")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not 0 < size < 2**63
    ):
        raise DesiredStateError(f"{where}.size must be a positive integer, got {json_text(size)}")
    signature = item.get("signature")
    if signature is not None and (not isinstance(signature, str) or len(signature) > 1000):
        raise DesiredStateError(
            f"{where}.signature must be a base64 string, got {json_text(signature)}"
        )
    role = item.get("role", "serve")
    if role not in ("serve", "shadow"):
        raise DesiredStateError(f"{where}.role must be 'serve' or 'shadow', got {json_text(role)}")
    weight = item.get("weight", 100 if role == "serve" else 0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or (isinstance(weight, int) and not 0 <= weight <= MAX_WEIGHT)
        or not (math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT)
    ):
        raise DesiredStateError(
            f"{where}.weight must be a non-negative number up to {MAX_WEIGHT:g}, "
            f"got {json_text(weight)}"
        )
    if role == "shadow" and weight:
        raise DesiredStateError(f"{where} is a shadow and cannot take traffic (weight {weight})")
    variant = item.get("variant", f"{name}@{version}")
    if (
        not isinstance(variant, str)
        or not variant
        or len(variant) > MAX_TEXT
        or utf8_problem(variant)  # goes into status, logs and sd_notify text
    ):
        raise DesiredStateError(
            f"{where}.variant must be a non-empty printable string, got {json_text(variant)}"
        )
    return ModelEntry(name, version, sha, size, signature, role, float(weight), variant)
