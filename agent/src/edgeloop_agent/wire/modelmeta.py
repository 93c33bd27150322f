"""The metadata every edgeloop model carries inside its ONNX file.

The control node embeds it at export time under the ONNX ``metadata_props`` key
``edgeloop``; the agent reads it back through onnxruntime's model metadata. One
file therefore holds everything the agent needs (graph, feature order, classes,
drift reference), and one sha256/signature covers all of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeloop_agent.wire.jsontext import json_name, json_text

META_KEY = "edgeloop"
FORMAT_VERSION = 1

Task = Literal["classification", "regression"]
# How a request sends each feature (docs/protocol.md, "How each feature type is sent"):
# "float" a JSON number; "bool" a JSON boolean (true/false, or the numbers 0 and 1),
# fed to the graph's float32 input as 1.0/0.0 exactly as training converted the
# column; "string" a JSON string (a category). An agent older than "bool" refuses
# a model that uses it, naming the dtype, rather than serving it wrongly.
FeatureType = Literal["float", "bool", "string"]
# The float32 graph input carries both numeric kinds.
NUMERIC_TYPES: tuple[FeatureType, ...] = ("float", "bool")
InputType = Literal["float32", "string"]


class ModelMetaError(ValueError):
    """The metadata embedded in a model is missing or inconsistent."""


@dataclass(frozen=True)
class FeatureSpec:
    """One request feature, in the order the list form of a request uses."""

    name: str
    dtype: FeatureType = "float"


@dataclass(frozen=True)
class InputSpec:
    """One ONNX graph input, built by gathering request features in this order."""

    name: str
    dtype: InputType
    features: tuple[str, ...]


@dataclass(frozen=True)
class ModelMeta:
    task: Task
    features: tuple[FeatureSpec, ...]
    inputs: tuple[InputSpec, ...]
    # ONNX output names: {"label": ..., "probabilities": ...} for classifiers,
    # {"value": ...} for regressors.
    outputs: dict[str, str]
    classes: tuple[Any, ...] | None = None
    # True when the pipeline imputes missing values, so NaN/null is a legal input.
    handles_missing: bool = False
    # Reference drift profile (see edgeloop_agent.wire.profile); None if absent.
    profile: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Calibration map of a classifier (see edgeloop_agent.wire.calibration), checked by
    # its user like the profile; None for regressors and models trained before it existed.
    calibration: dict[str, Any] | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric_feature_names(self) -> list[str]:
        """Every feature fed through the float32 input (numbers and booleans), in order:
        the columns of the drift profile."""
        return [f.name for f in self.features if f.dtype in NUMERIC_TYPES]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": FORMAT_VERSION,
            "task": self.task,
            "features": [{"name": f.name, "dtype": f.dtype} for f in self.features],
            "inputs": [
                {"name": i.name, "dtype": i.dtype, "features": list(i.features)}
                for i in self.inputs
            ],
            "outputs": dict(self.outputs),
            "classes": list(self.classes) if self.classes is not None else None,
            "handles_missing": self.handles_missing,
            "profile": self.profile,
            "extra": self.extra,
        }
        if self.calibration is not None:  # absent, not null: older metadata keeps its bytes
            out["calibration"] = self.calibration
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelMetaError(f"model metadata is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> ModelMeta:
        if not isinstance(data, dict):
            raise ModelMetaError("model metadata must be a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT_VERSION:
            raise ModelMetaError(
                f"model metadata format {json_text(fmt)} is not supported "
                f"(expected {FORMAT_VERSION})"
            )
        task = data.get("task")
        if task not in ("classification", "regression"):
            raise ModelMetaError(
                f"model metadata 'task' must be classification or regression, got {json_text(task)}"
            )
        features, inputs = _features_and_inputs(data)
        outputs, classes = _outputs_and_classes(data, task)
        profile = data.get("profile")
        if profile is not None and not isinstance(profile, dict):
            raise ModelMetaError("model metadata 'profile' must be an object or null")
        extra = data.get("extra") or {}
        if not isinstance(extra, dict):
            raise ModelMetaError("model metadata 'extra' must be an object")
        calibration = data.get("calibration")
        if calibration is not None and not isinstance(calibration, dict):
            raise ModelMetaError("model metadata 'calibration' must be an object or absent")
        return cls(
            task=task,
            features=features,
            inputs=inputs,
            outputs=outputs,
            classes=classes,
            handles_missing=bool(data.get("handles_missing", False)),
            profile=profile,
            extra=extra,
            calibration=calibration,
        )


def _features_and_inputs(
    data: dict[str, Any],
) -> tuple[tuple[FeatureSpec, ...], tuple[InputSpec, ...]]:
    """The features, and the inputs that feed each of them to the model exactly once."""
    features = tuple(_feature(f) for f in _list(data, "features"))
    if not features:
        raise ModelMetaError("model metadata lists no features")
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelMetaError(f"model metadata repeats feature names: {', '.join(dupes)}")
    inputs = tuple(_input(i) for i in _list(data, "inputs"))
    covered = [n for i in inputs for n in i.features]
    if sorted(covered) != sorted(names):
        raise ModelMetaError(
            "model metadata inputs must use every feature exactly once "
            f"(features {json_text(names, 200)}, inputs use {json_text(covered, 200)})"
        )
    by_name = {f.name: f for f in features}
    for inp in inputs:
        want = NUMERIC_TYPES if inp.dtype == "float32" else ("string",)
        wrong = [n for n in inp.features if by_name[n].dtype not in want]
        if wrong:
            raise ModelMetaError(
                f"input {json_name(inp.name)} is {inp.dtype} but features {json_text(wrong)} "
                f"are not {' or '.join(want)}"
            )
    return features, inputs


def _outputs_and_classes(
    data: dict[str, Any], task: str
) -> tuple[dict[str, str], tuple[int | str, ...] | None]:
    """The output names by role, and the classes of a classifier (None for a regressor)."""
    outputs = data.get("outputs")
    if not isinstance(outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in outputs.items()
    ):
        raise ModelMetaError("model metadata 'outputs' must map roles to output names")
    if task != "classification":
        if set(outputs) != {"value"}:
            raise ModelMetaError("a regressor must declare exactly a 'value' output")
        return dict(outputs), None
    if set(outputs) != {"label", "probabilities"}:
        raise ModelMetaError("a classifier must declare 'label' and 'probabilities' outputs")
    classes = data.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        raise ModelMetaError("a classifier must list at least two classes")
    if not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes):
        raise ModelMetaError("classes must be integers or strings")
    return dict(outputs), tuple(classes)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ModelMetaError(f"model metadata {json_name(key)} must be a list")
    return value


def _feature(item: Any) -> FeatureSpec:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise ModelMetaError(f"feature entry {json_text(item)} needs a non-empty string 'name'")
    dtype = item.get("dtype", "float")
    if dtype not in ("float", "bool", "string"):
        raise ModelMetaError(
            f"feature {json_name(item['name'])} has unsupported dtype {json_text(dtype)} "
            "(this agent knows float, bool and string)"
        )
    return FeatureSpec(item["name"], dtype)


def _input(item: Any) -> InputSpec:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ModelMetaError(f"input entry {json_text(item)} needs a string 'name'")
    dtype = item.get("dtype")
    if dtype not in ("float32", "string"):
        raise ModelMetaError(
            f"input {json_name(item['name'])} has unsupported dtype {json_text(dtype)}"
        )
    feats = item.get("features")
    if not isinstance(feats, list) or not feats or not all(isinstance(f, str) for f in feats):
        raise ModelMetaError(
            f"input {json_name(item['name'])} needs a non-empty list of feature names"
        )
    return InputSpec(item["name"], dtype, tuple(feats))
