"""Run an edgeloop ONNX model on a DataFrame, the way the agent will.

The model describes its own inputs (:class:`ModelMeta` embedded under
``metadata_props["edgeloop"]``), so the control node can evaluate any registered
version -- a champion trained months ago included -- without its pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd

from edgeloop_agent.wire.modelmeta import META_KEY, ModelMeta, ModelMetaError
from edgeloop_control.training.columns import numeric_values, string_values
from edgeloop_control.training.errors import InputError

_ORT_TYPES = {"float32": "tensor(float)", "string": "tensor(string)"}


@dataclass(frozen=True)
class Prediction:
    """Outputs for N rows: ``label`` + ``probabilities`` or ``value``."""

    label: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    value: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray:
        """One number per row, as the drift profile expects it: the positive-class
        probability (binary), the top probability (multiclass) or the value."""
        if self.value is not None:
            return self.value
        assert self.probabilities is not None
        if self.probabilities.shape[1] == 2:
            return self.probabilities[:, 1]
        return self.probabilities.max(axis=1)


def build_inputs(meta: ModelMeta, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The ONNX feed for ``frame``: float32 [N, k] and object-of-str [N, m] arrays,
    columns gathered in the order each input lists them."""
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [f for f in meta.feature_names if f not in frame.columns]
    if missing:
        raise InputError(f"the frame lacks feature column(s) {missing} that the model needs")
    n = len(frame)
    feed: dict[str, np.ndarray] = {}
    for spec in meta.inputs:
        if spec.dtype == "float32":
            arr = np.empty((n, len(spec.features)), dtype=np.float32)
            for j, name in enumerate(spec.features):
                arr[:, j] = numeric_values(frame[name], name)
                if not meta.handles_missing and np.isnan(arr[:, j]).any():
                    raise InputError(
                        f"column {name!r} has missing values and this model does not handle them"
                    )
        else:
            arr = np.empty((n, len(spec.features)), dtype=object)
            for j, name in enumerate(spec.features):
                arr[:, j] = string_values(frame[name], name)
        feed[spec.name] = arr
    return feed


class OnnxPredictor:
    """An onnxruntime session plus the metadata that says how to feed it.

    ``threads=1`` by default: a single intra-op thread makes tree-ensemble sums run
    in a fixed order, so repeated evaluations give bit-identical metrics.
    """

    def __init__(self, onnx_bytes: bytes, *, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InputError(f"onnxruntime cannot load the model: {exc}") from exc
        custom = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in custom:
            raise InputError(f"the model has no {META_KEY!r} metadata; it is not an edgeloop model")
        try:
            self.meta = ModelMeta.from_json(custom[META_KEY])
        except ModelMetaError as exc:
            raise InputError(f"the model's metadata is invalid: {exc}") from None
        self._check_graph()

    def _check_graph(self) -> None:
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        declared = {spec.name for spec in self.meta.inputs}
        if set(graph_inputs) != declared:
            raise InputError(
                f"the metadata declares inputs {sorted(declared)} but the graph has "
                f"{sorted(graph_inputs)}"
            )
        for spec in self.meta.inputs:
            actual = graph_inputs[spec.name]
            if actual.type != _ORT_TYPES[spec.dtype]:
                raise InputError(
                    f"input {spec.name!r} is {actual.type} in the graph, {spec.dtype} in the "
                    "metadata"
                )
            width = actual.shape[1] if len(actual.shape) == 2 else None
            if isinstance(width, int) and width != len(spec.features):
                raise InputError(
                    f"input {spec.name!r} takes {width} columns but the metadata lists "
                    f"{len(spec.features)} features"
                )
        graph_outputs = {o.name for o in self.session.get_outputs()}
        absent = sorted(set(self.meta.outputs.values()) - graph_outputs)
        if absent:
            raise InputError(f"the metadata names outputs {absent} the graph does not have")

    @property
    def task(self) -> str:
        return self.meta.task

    def build_inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return build_inputs(self.meta, frame)

    def predict(self, frame: pd.DataFrame) -> Prediction:
        feed = self.build_inputs(frame)
        roles = list(self.meta.outputs)
        results = self.session.run([self.meta.outputs[r] for r in roles], feed)
        by_role = dict(zip(roles, results, strict=True))
        if self.meta.task == "regression":
            return Prediction(value=np.asarray(by_role["value"], dtype=np.float64).reshape(-1))
        probabilities = np.asarray(by_role["probabilities"], dtype=np.float64)
        assert self.meta.classes is not None
        if probabilities.shape[1:] != (len(self.meta.classes),):
            raise InputError(
                f"the model returned probabilities of shape {probabilities.shape} for "
                f"{len(self.meta.classes)} classes"
            )
        return Prediction(
            label=np.asarray(by_role["label"]).reshape(-1), probabilities=probabilities
        )
