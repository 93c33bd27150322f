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
    comparable, note = metrics_comparable(a.metadata, b.metadata)
    return {
        "a": a.ref,
        "b": b.ref,
        "metrics": metrics,
        "params": params,
        "metadata": rest,
        "artifact": artifact,
        "lineage": lineage,
        "stages": {"a": list(a.stages), "b": list(b.stages)},
        "metrics_comparable": comparable,
        "metrics_note": note,
    }


def metrics_comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether two versions' metrics were measured on the same rows, and in words.

    A metric difference between two holdouts mixes the models' difference with
    the data's; the champion gate and A/B tests compare on the same rows.
    """
    ha = a.get("holdout_hash") or (a.get("metrics") or {}).get("holdout_hash")
    hb = b.get("holdout_hash") or (b.get("metrics") or {}).get("holdout_hash")
    if not ha or not hb:
        return None, "a version records no holdout hash: whether the metrics compare is unknown"
    if ha == hb:
        return True, "both versions were evaluated on the same holdout rows"
    return False, (
        "the versions were evaluated on different holdouts, so their metric deltas mix the "
        "models' difference with the data's; the champion gate (recorded in metadata."
        "champion_gate) and an A/B test compare on the same rows"
    )
