"""Lineage of a registered version: where it came from (run, data, parent version)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeloop_control.registry.errors import RegistryError
from edgeloop_control.registry.model import LINEAGE_KEYS, to_json_value
from edgeloop_control.registry.refs import parse_ref, short_version
from edgeloop_control.registry.tagstate import ModelTags, resolve


def check_lineage(
    name: str,
    lineage: dict[str, Any] | None,
    model: ModelTags,
    model_of: Callable[[str], ModelTags],
) -> dict[str, Any]:
    """The lineage to record for a new version of ``name``: JSON values only, the
    well-known keys first, and ``parent`` resolved to a concrete version (a stage
    alias moves; the lineage must not). ``model_of`` finds another model's tags."""
    if lineage is None:
        return {}
    if not isinstance(lineage, dict):
        raise RegistryError(f"lineage must be a dict, got {type(lineage).__name__}")
    out = to_json_value(lineage, "lineage")
    for key in ("run_id", "run_uri", "cause"):
        if out.get(key) is not None and not isinstance(out[key], str):
            raise RegistryError(f"lineage.{key} must be a string, got {out[key]!r}")
    parent = out.get("parent")
    if parent is not None:
        if not isinstance(parent, str):
            raise RegistryError(f"lineage.parent must be a version string, got {parent!r}")
        ref = parse_ref(parent if "@" in parent or "#" in parent else f"{name}@{parent}")
        if ref.name != name:
            parent_model = model_of(ref.name)
        else:
            if not model.versions:
                raise RegistryError(
                    f"lineage.parent {parent!r}: model {name!r} has no versions yet"
                )
            parent_model = model
        # Record the concrete version, not a moving stage alias.
        resolved = resolve(ref.name, parent_model, ref)
        out["parent"] = f"{ref.name}@{short_version(resolved)}"
    ordered = {k: out[k] for k in LINEAGE_KEYS if k in out}
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return ordered
