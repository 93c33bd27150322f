"""Lineage of a registered version: where it came from (run, data, parent version)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


# A version's links to tracking runs made after it was registered (`edgeloop runs push`
# replays the workspace run that trained it to an MLflow server, which gives it a new id).
# The version's metadata.json is fixed at its tagged commit; this file sits beside it and
# is read at HEAD, so a link is one more commit and the tag never moves.
LINKS_NAME = "tracking.json"


def links_path(name: str, version: str) -> str:
    return f"models/{name}/{version}/{LINKS_NAME}"


def public_uri(uri: str) -> str:
    """``uri`` without user and password: the lineage is committed and shown to people."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def add_link(text: str | None, entry: dict[str, Any]) -> str | None:
    """The links file with ``entry`` added, or None if it is already there."""
    doc = json.loads(text) if text else {"runs": []}
    runs = doc.setdefault("runs", [])
    if any(r.get("run_id") == entry["run_id"] and r.get("uri") == entry["uri"] for r in runs):
        return None
    runs.append(entry)
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def with_links(lineage: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
    """``lineage`` plus the newest linked MLflow run (``mlflow_run_id``, ``mlflow_uri``)
    and, when there are several (pushed to more than one server), all of them."""
    if not blob:
        return lineage
    try:
        runs = json.loads(blob).get("runs")
    except (ValueError, AttributeError):
        return lineage  # a links file we cannot read hides the links, not the version
    if not isinstance(runs, list) or not runs or not isinstance(runs[-1], dict):
        return lineage
    out = {**lineage, "mlflow_run_id": runs[-1].get("run_id"), "mlflow_uri": runs[-1].get("uri")}
    if len(runs) > 1:
        out["mlflow_runs"] = runs
    return out
