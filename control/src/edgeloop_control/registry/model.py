"""What a registered model version looks like to callers, and its on-disk record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop_control.registry.errors import RegistryError

RECORD_FORMAT = 1
ARTIFACT_NAME = "model.onnx"
RECORD_NAME = "metadata.json"
LINEAGE_KEYS = ("run_id", "run_uri", "parent", "cause")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str  # "v3"
    semver: str  # "3.0.0"
    sha256: str
    size: int
    signature: str  # base64 Ed25519 over the raw ONNX bytes
    key_id: str  # fingerprint of the public key that verifies ``signature``
    created_at: str  # ISO 8601, UTC
    metadata: dict[str, Any]
    lineage: dict[str, Any]
    stages: list[str] = field(default_factory=list)
    artifact_path: Path = Path()
    commit: str = ""
    tag: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "semver": self.semver,
            "ref": self.ref,
            "sha256": self.sha256,
            "size": self.size,
            "signature": self.signature,
            "key_id": self.key_id,
            "created_at": self.created_at,
            "stages": list(self.stages),
            "artifact_path": str(self.artifact_path),
            "commit": self.commit,
            "tag": self.tag,
            "lineage": self.lineage,
            "metadata": self.metadata,
        }


def to_json_value(value: Any, where: str) -> Any:
    """Check (and lightly normalise) a value for strict JSON, naming the bad field.

    numpy scalars and arrays become plain numbers and lists; NaN and infinities are
    refused because strict JSON readers (jq, browsers, Go) reject them.
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RegistryError(f"{where} is {value!r}; JSON cannot hold NaN or infinity")
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RegistryError(f"{where} has a non-string key {key!r}")
            out[key] = to_json_value(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    # numpy (and similar) without importing it: arrays have tolist, scalars item.
    for method in ("tolist", "item"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                plain = convert()
            except (TypeError, ValueError):
                break
            if plain is not value:
                return to_json_value(plain, where)
    raise RegistryError(f"{where} has a {type(value).__name__} value, which JSON cannot hold")
