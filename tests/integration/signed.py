"""Desired-state envelopes as the control node signs them, for tests that publish by hand."""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeloop_control.infra.signing import sign_artifact_statement, sign_desired


def unsealed(doc: dict[str, Any]) -> dict[str, Any]:
    """A published document without what signing adds (device, expires, statement signatures)."""
    out = {k: v for k, v in doc.items() if k not in ("device", "expires")}
    out["models"] = [{k: v for k, v in m.items() if k != "signature"} for m in doc["models"]]
    return out


def sign_entry(entry: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    sig = sign_artifact_statement(
        entry["name"], entry["version"], entry["sha256"], entry["size"], key
    )
    return {**entry, "signature": sig}


def envelope(
    device: str | None,
    revision: int,
    entries: list[dict[str, Any]],
    keys: list[Ed25519PrivateKey],
    *,
    expires: float | None = None,
    sign_artifacts: bool = True,
    **extra: Any,
) -> bytes:
    """A signed document; entries whose ``signature`` is None get a statement signature."""
    models = [
        sign_entry(e, keys[0]) if sign_artifacts and e.get("signature") is None else e
        for e in entries
    ]
    doc: dict[str, Any] = {
        "revision": revision,
        "models": models,
        "expires": expires if expires is not None else int(time.time() + 3600),
        **extra,
    }
    if device is not None:
        doc["device"] = device
    return sign_desired(doc, keys)
