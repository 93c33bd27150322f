"""Differences between two model versions' metadata, grouped the way people read them."""

from __future__ import annotations

from typing import Any

from edgeloop_control.registry.model import ModelVersion

# Top-level metadata keys whose leaves are metrics / training parameters. The
# training code decides the metadata layout; these are the names it may use.
METRIC_KEYS = frozenset({"metrics"})
PARAM_KEYS = frozenset({"params", "parameters", "algorithm", "hyperparameters"})


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists are leaves (compared whole)."""
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    changes = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if key in a and key in b and va == vb:
            continue
        entry: dict[str, Any] = {"a": va, "b": vb}
        if (
            isinstance(va, (int, float))
            and isinstance(vb, (int, float))
            and not isinstance(va, bool)
            and not isinstance(vb, bool)
        ):
            entry["delta"] = vb - va
        changes[key] = entry
    return changes


def diff_versions(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """Changed fields only: {"metrics": {...}, "params": {...}, "metadata": {...}, ...}.

    Each change is ``{"a": old, "b": new}`` plus ``"delta"`` for two numbers.
    """
    flat_a, flat_b = flatten(a.metadata), flatten(b.metadata)

    def group(keys: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        def pick(flat: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in flat.items() if k.split(".", 1)[0] in keys}

        return pick(flat_a), pick(flat_b)

    metrics = _changes(*group(METRIC_KEYS))
    params = _changes(*group(PARAM_KEYS))
    grouped = METRIC_KEYS | PARAM_KEYS
    rest = _changes(
        {k: v for k, v in flat_a.items() if k.split(".", 1)[0] not in grouped},
        {k: v for k, v in flat_b.items() if k.split(".", 1)[0] not in grouped},
    )
    artifact = _changes(
        {"sha256": a.sha256, "size": a.size, "key_id": a.key_id},
        {"sha256": b.sha256, "size": b.size, "key_id": b.key_id},
    )
    lineage = _changes(flatten(a.lineage), flatten(b.lineage))
    return {
        "a": a.ref,
        "b": b.ref,
        "metrics": metrics,
        "params": params,
        "metadata": rest,
        "artifact": artifact,
        "lineage": lineage,
        "stages": {"a": list(a.stages), "b": list(b.stages)},
    }
