"""Desired state: which model versions a device should run, and how.

The control node publishes one retained document per device on
``{prefix}/{device}/desired``; see docs/protocol.md for the schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class DesiredStateError(ValueError):
    """A desired-state document the agent refuses (reported on status)."""

    code = "invalid_desired_state"


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

    @property
    def serving(self) -> list[ModelEntry]:
        return [m for m in self.models if m.role == "serve"]

    @property
    def shadows(self) -> list[ModelEntry]:
        return [m for m in self.models if m.role == "shadow"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "experiment": self.experiment,
            "models": [m.to_dict() for m in self.models],
            "allocation": self.allocation,
            "settings": self.settings,
        }

    @classmethod
    def from_payload(cls, payload: bytes) -> DesiredState:
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DesiredStateError(f"desired state is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> DesiredState:
        if not isinstance(data, dict):
            raise DesiredStateError("desired state must be a JSON object")
        revision = data.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise DesiredStateError(
                f"desired state 'revision' must be a non-negative integer, got {revision!r}"
            )
        experiment = data.get("experiment")
        if experiment is not None and (not isinstance(experiment, str) or not experiment):
            raise DesiredStateError(f"'experiment' must be a non-empty string, got {experiment!r}")
        raw_models = data.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise DesiredStateError("desired state 'models' must be a non-empty list")
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
        return cls(revision, experiment, models, allocation, settings)


def _entry(index: int, item: Any) -> ModelEntry:
    where = f"models[{index}]"
    if not isinstance(item, dict):
        raise DesiredStateError(f"{where} must be an object")
    name, version = item.get("name"), item.get("version")
    for field_name, value in (("name", name), ("version", version)):
        if not isinstance(value, str) or not _NAME.match(value):
            raise DesiredStateError(
                f"{where}.{field_name} must be letters, digits, '_', '.' or '-', got {value!r}"
            )
    sha = item.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise DesiredStateError(f"{where}.sha256 must be 64 lowercase hex digits, got {sha!r}")
    size = item.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise DesiredStateError(f"{where}.size must be a positive integer, got {size!r}")
    signature = item.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise DesiredStateError(f"{where}.signature must be a base64 string, got {signature!r}")
    role = item.get("role", "serve")
    if role not in ("serve", "shadow"):
        raise DesiredStateError(f"{where}.role must be 'serve' or 'shadow', got {role!r}")
    weight = item.get("weight", 100 if role == "serve" else 0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise DesiredStateError(f"{where}.weight must be a non-negative number, got {weight!r}")
    if role == "shadow" and weight:
        raise DesiredStateError(f"{where} is a shadow and cannot take traffic (weight {weight})")
    variant = item.get("variant", f"{name}@{version}")
    if not isinstance(variant, str) or not variant or len(variant) > 200:
        raise DesiredStateError(f"{where}.variant must be a non-empty string, got {variant!r}")
    return ModelEntry(name, version, sha, size, signature, role, float(weight), variant)
