"""The model versions an experiment compares: registry look-ups and what task a model does.

Kept apart from the policy because it is the only place that touches the registry (git,
DVC, artifact bytes) and ONNX parsing; the registry is opened on first use, so reading an
experiment's status needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeloop_control.fleet.desired import VersionLike
from edgeloop_control.infra.workspace import Workspace

from .config import ExperimentError
from .evaluate import KIND_OF_TASK

if TYPE_CHECKING:
    from edgeloop_control.registry import ModelVersion, Registry


@dataclass
class Entry:
    """A model version as a desired-state entry describes it (enough to plan desired state).

    Plain (not frozen) so it satisfies the planner's ``VersionLike`` protocol, whose
    attributes are declared settable; registry versions are copied into one (:meth:`of`).
    """

    name: str
    version: str
    sha256: str
    size: int
    signature: str | None

    @classmethod
    def from_entry(cls, m: dict[str, Any]) -> Entry:
        return cls(m["name"], m["version"], m["sha256"], m.get("size") or 0, m.get("signature"))

    @classmethod
    def of(cls, mv: ModelVersion) -> Entry:
        return cls(mv.name, mv.version, mv.sha256, mv.size, mv.signature)


def shadows(doc: dict[str, Any] | None, exclude: set[str]) -> list[VersionLike]:
    """The shadows a device runs now, minus the experiment's own versions (kept as they are)."""
    if not doc:
        return []
    return [
        Entry.from_entry(m)
        for m in doc.get("models", [])
        if m.get("role") == "shadow" and m.get("version") not in exclude
    ]


class Versions:
    """The workspace's registry, opened lazily, with errors as :class:`ExperimentError`."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from edgeloop_control.registry import Registry, RegistryError

            try:
                self._registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
            except RegistryError as exc:
                raise ExperimentError(str(exc)) from None
        return self._registry

    def resolve(self, model: str, ref: str) -> ModelVersion:
        """``v2``, ``sensor@v2`` or ``sensor#champion`` -> the registry's ModelVersion."""
        from edgeloop_control.registry import RegistryError

        if not isinstance(ref, str) or not ref.strip():
            raise ExperimentError(f"a model version is required, got {ref!r}")
        ref = ref.strip()
        full = ref if any(sep in ref for sep in "@#:") else f"{model}@{ref}"
        try:
            mv = self.registry.get(full)
        except RegistryError as exc:
            raise ExperimentError(str(exc)) from None
        if mv.name != model:
            raise ExperimentError(f"{ref} is a version of {mv.name!r}, not of {model!r}")
        return mv

    def stage(self, model: str, stage: str) -> str | None:
        """The version holding ``stage`` ("champion", "challenger"), if any."""
        return self.registry.stages(model).get(stage)


def task_of(mv: ModelVersion, data: bytes) -> str:
    """classification or regression: from the registry metadata, else the ONNX metadata."""
    task = (mv.metadata or {}).get("task")
    if task in KIND_OF_TASK:
        return str(task)
    import onnx

    from edgeloop_agent.wire.modelmeta import META_KEY, ModelMeta, ModelMetaError

    try:
        model = onnx.load_model_from_string(data)
        raw = {p.key: p.value for p in model.metadata_props}.get(META_KEY)
        if raw is None:
            raise ModelMetaError(f"no {META_KEY!r} metadata")
        return ModelMeta.from_json(raw).task
    except Exception as exc:  # protobuf and metadata parsers raise assorted types
        raise ExperimentError(
            f"cannot tell whether {mv.ref} is a classifier or a regressor: {exc}"
        ) from None
