"""A version's record, ``models/<name>/v<N>/metadata.json``: written at
registration, read back (from the tagged commit) into a :class:`ModelVersion`."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop_control.infra import signing
from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.model import ARTIFACT_NAME, RECORD_FORMAT, RECORD_NAME, ModelVersion
from edgeloop_control.registry.refs import semver_str, short_version
from edgeloop_control.registry.tagstate import ModelTags, Registered, Semver


def new_record(
    name: str,
    semver: Semver,
    data: bytes,
    key: Ed25519PrivateKey,
    lineage: dict[str, Any],
    metadata: Any,
) -> dict[str, Any]:
    """The metadata.json of a new version: its artifact's digest and signature,
    lineage and the caller's metadata."""
    return {
        "format": RECORD_FORMAT,
        "name": name,
        "version": short_version(semver),
        "semver": semver_str(semver),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "path": ARTIFACT_NAME,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "signature": signing.sign(data, key),
            "signature_algorithm": "ed25519",
            "key_id": signing.key_id(key.public_key()),
        },
        "lineage": lineage,
        "metadata": metadata,
    }


def version_from_record(
    root: Path, name: str, semver: Semver, reg: Registered, model: ModelTags, blob: bytes
) -> ModelVersion:
    """The :class:`ModelVersion` a tagged commit's metadata.json describes, checked
    against the tag (format, name, version)."""
    where = f"{RECORD_NAME} of {reg.tag}"
    try:
        record = json.loads(blob)
        artifact = record["artifact"]
        if record.get("format") != RECORD_FORMAT:
            raise RegistryError(
                f"{where} has format {record.get('format')!r}; "
                f"this edgeloop reads format {RECORD_FORMAT}"
            )
        if record["name"] != name or record["semver"] != semver_str(semver):
            raise RegistryError(
                f"{where} describes {record['name']}@{record['semver']}, not the tagged version"
            )
        vdir = root / "models" / name / short_version(semver)
        return ModelVersion(
            name=name,
            version=short_version(semver),
            semver=semver_str(semver),
            sha256=artifact["sha256"],
            size=int(artifact["size"]),
            signature=artifact["signature"],
            key_id=artifact.get("key_id", ""),
            created_at=record["created_at"],
            metadata=record.get("metadata") or {},
            lineage=record.get("lineage") or {},
            stages=model.stages_of(semver),
            artifact_path=vdir / artifact.get("path", ARTIFACT_NAME),
            commit=reg.commit,
            tag=reg.tag,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{where} is malformed: {exc!r}") from None
