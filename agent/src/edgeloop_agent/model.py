"""One loaded ONNX model: request rows in, predictions out.

Row validation lives here because only the model knows its feature names,
their types and whether it can take missing values.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # ORT_DISABLE_TELEMETRY is set by edgeloop_agent/__init__.py

from edgeloop_agent.protocol import Code, RequestError
from edgeloop_agent.wire.jsontext import json_name, json_text
from edgeloop_agent.wire.modelmeta import META_KEY, NUMERIC_TYPES, ModelMeta, ModelMetaError

ort.disable_telemetry_events()  # belt and braces: no event is ever queued for upload

# Largest finite float32: bigger finite inputs would silently become inf in the graph.
_F32_MAX = float(np.finfo(np.float32).max)


class ModelLoadError(Exception):
    """The artifact could not be turned into a working model."""


@dataclass(slots=True)
class Outputs:
    labels: np.ndarray | None
    probabilities: np.ndarray | None
    values: np.ndarray | None

    def __len__(self) -> int:
        arr = self.labels if self.labels is not None else self.values
        return 0 if arr is None else len(arr)


def session_options(threads: int = 1) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The arena keeps the high-water mark of every batch size ever seen; on a
    # 4 GB box we prefer plain malloc/free (see docs/performance.md).
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    # A spinning thread pool burns a core while idle; the agent shares the box.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxModel:
    """A verified artifact loaded into an onnxruntime session."""

    def __init__(
        self,
        model: bytes | str | os.PathLike[str],
        *,
        name: str,
        version: str,
        sha256: str,
        threads: int = 1,
    ) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        source = model if isinstance(model, bytes) else str(Path(model))
        try:
            self.session = ort.InferenceSession(
                source, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"onnxruntime cannot load {name}@{version}: {exc}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise ModelLoadError(f"{name}@{version} carries no '{META_KEY}' metadata")
        try:
            self.meta = ModelMeta.from_json(raw)
        except ModelMetaError as exc:
            raise ModelLoadError(f"{name}@{version}: {exc}") from None
        self._check_graph()
        self.feature_names = self.meta.feature_names
        self.n_features = len(self.feature_names)
        self._names_set = frozenset(self.feature_names)
        self._kinds = [f.dtype for f in self.meta.features]
        self._is_numeric = [f.dtype in NUMERIC_TYPES for f in self.meta.features]
        # Every feature goes through the float32 input (numbers and booleans).
        self.all_numeric = all(self._is_numeric)
        # Every feature a plain number: the per-request fast path of validate_row().
        self._all_float = all(k == "float" for k in self._kinds)
        index = {n: i for i, n in enumerate(self.feature_names)}
        self._input_plan = [
            (i.name, i.dtype, [index[f] for f in i.features]) for i in self.meta.inputs
        ]
        self.numeric_index = [i for i, ok in enumerate(self._is_numeric) if ok]
        # Float inputs concatenated in graph order, permuted back to the order of
        # the numeric features in the metadata (the drift profile's order).
        concat = [f for i in self.meta.inputs if i.dtype == "float32" for f in i.features]
        self._numeric_perm = [concat.index(n) for n in self.meta.numeric_feature_names]
        self.is_classifier = self.meta.task == "classification"
        self.classes = list(self.meta.classes or [])
        self._class_keys = [str(c) for c in self.classes]
        # '"<class>":' as json.dumps writes an object key, for reply_fragments().
        self._class_json_keys = [encode_basestring_ascii(k) + ":" for k in self._class_keys]
        self._output_names = list(self.meta.outputs.values())
        self._smoke_test()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    # -- loading checks ------------------------------------------------------

    def _check_graph(self) -> None:
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        for spec in self.meta.inputs:
            node = graph_inputs.get(spec.name)
            if node is None:
                raise ModelLoadError(
                    f"{self.ref}: metadata input {json_name(spec.name)} is not a graph input "
                    f"(graph has {json_text(sorted(graph_inputs))})"
                )
            want = "tensor(float)" if spec.dtype == "float32" else "tensor(string)"
            if node.type != want:
                raise ModelLoadError(
                    f"{self.ref}: graph input {json_name(spec.name)} is {node.type}, "
                    f"metadata says {want}"
                )
            width = node.shape[-1] if node.shape else None
            if isinstance(width, int) and width != len(spec.features):
                raise ModelLoadError(
                    f"{self.ref}: graph input {json_name(spec.name)} takes {width} columns, "
                    f"metadata lists {len(spec.features)} features"
                )
        extra = set(graph_inputs) - {s.name for s in self.meta.inputs}
        if extra:
            raise ModelLoadError(
                f"{self.ref}: graph inputs {json_text(sorted(extra))} are not described"
            )
        outs = {o.name for o in self.session.get_outputs()}
        missing = [o for o in self.meta.outputs.values() if o not in outs]
        if missing:
            raise ModelLoadError(
                f"{self.ref}: outputs {json_text(missing)} not in graph ({json_text(sorted(outs))})"
            )

    def _smoke_test(self) -> None:
        # A model that loads but cannot run must be refused before it serves.
        row: list[Any] = [0.0 if numeric else "" for numeric in self._is_numeric]
        try:
            out = self.run(self.build([row]))
        except Exception as exc:
            raise ModelLoadError(f"{self.ref}: test inference failed: {exc}") from None
        if len(out) != 1:
            raise ModelLoadError(f"{self.ref}: test inference returned {len(out)} rows for 1")
        if self.is_classifier and (
            out.probabilities is None or out.probabilities.shape[1] != len(self.classes)
        ):
            raise ModelLoadError(f"{self.ref}: probabilities do not match the declared classes")

    # -- requests ------------------------------------------------------------

    def _missing_message(self, row: dict[Any, Any]) -> str:
        """Names the missing features and, when the row also has names the model does not
        know (a misspelling: ``car`` for ``car_value``), those too, with the close match."""
        import difflib  # only on this error path: the request path stays lean

        missing = [n for n in self.feature_names if n not in row]
        unknown = sorted(str(k) for k in row if k not in self._names_set)
        message = f"missing features: {', '.join(missing)}"
        if unknown:
            hints = []
            for name in unknown[:20]:
                close = difflib.get_close_matches(name, missing, n=1, cutoff=0.5)
                close = close or [m for m in missing if m.startswith(name) or name.startswith(m)]
                hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
            message += f"; unknown features: {', '.join(hints)}"
        return message

    def validate_row(self, row: Any) -> list[Any]:
        """Return the row's values in model order, or raise RequestError."""
        values = self._ordered(row)
        if self._all_float:
            for i, v in enumerate(values):
                t = type(v)
                # One chained comparison rejects NaN, inf and float32 overflow at once.
                if (t is float or t is int) and -_F32_MAX <= v <= _F32_MAX:
                    continue
                values = list(values)
                values[i] = self._coerce_numeric(self.feature_names[i], v)
            return values
        return self._checked_mixed(values)

    def _ordered(self, row: Any) -> list[Any]:
        """The row's values in model order (not yet type-checked)."""
        if isinstance(row, dict):
            try:
                values = [row[n] for n in self.feature_names]
            except KeyError:
                raise RequestError(Code.MISSING_FEATURE, self._missing_message(row)) from None
            if len(row) != self.n_features:
                unknown = sorted(str(k) for k in row if k not in self._names_set)
                raise RequestError(
                    Code.UNKNOWN_FEATURE,
                    f"unknown features: {', '.join(unknown)} (model {self.ref} expects "
                    f"{', '.join(self.feature_names)})",
                )
        elif isinstance(row, list):
            if len(row) != self.n_features:
                raise RequestError(
                    Code.WRONG_FEATURE_COUNT,
                    f"features list has {len(row)} values, model {self.ref} expects "
                    f"{self.n_features} ({', '.join(self.feature_names)})",
                )
            values = row
        else:
            raise RequestError(
                Code.INVALID_FEATURES,
                f"features must be an object or a list, got {json_text(row)}",
            )
        return values

    def _checked_mixed(self, values: list[Any]) -> list[Any]:
        """A row with booleans or categories: each value checked against its kind."""
        out = list(values)
        for i, v in enumerate(out):
            kind = self._kinds[i]
            if kind == "float":
                t = type(v)
                if not ((t is float or t is int) and -_F32_MAX <= v <= _F32_MAX):
                    out[i] = self._coerce_numeric(self.feature_names[i], v)
            elif kind == "bool":
                if v is not True and v is not False:
                    out[i] = self._coerce_bool(self.feature_names[i], v)
            elif not isinstance(v, str):
                if v is None and self.meta.handles_missing:
                    out[i] = ""
                else:
                    raise RequestError(
                        Code.NON_STRING,
                        f"feature {json_name(self.feature_names[i])} must be a string "
                        f"(a category), got {json_text(v)}",
                    )
        return out

    def _missing(self, name: str, v: Any) -> float:
        """NaN for a model that imputes; otherwise the refusal of a missing value."""
        if self.meta.handles_missing:
            return math.nan
        what = "null" if v is None else "NaN"
        raise RequestError(
            Code.NON_FINITE,
            f"feature {json_name(name)} is {what}; model {self.ref} does not accept missing values",
        )

    def _coerce_numeric(self, name: str, v: Any) -> float:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return self._missing(name, v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            # A boolean is refused too: training saw this column as numbers, and a
            # flag in a numeric slot is most often a list-form row in the wrong order.
            raise RequestError(
                Code.NON_NUMERIC, f"feature {json_name(name)} must be a number, got {json_text(v)}"
            )
        if isinstance(v, int) or math.isfinite(v):
            raise RequestError(
                Code.NON_FINITE, f"feature {json_name(name)} value {json_text(v)} overflows float32"
            )
        raise RequestError(
            Code.NON_FINITE, f"feature {json_name(name)} is {json_text(v)}, which is not finite"
        )

    def _coerce_bool(self, name: str, v: Any) -> bool | float:
        """A boolean feature's value: kept as a bool (numpy makes it 1.0/0.0 in the float32
        input, as training converted the column, and a captured sample still says true)."""
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return self._missing(name, v)
        if type(v) in (int, float) and v in (0, 1):
            return bool(v)  # 0/1 from a client that stores flags as numbers
        raise RequestError(
            Code.NON_BOOLEAN,
            f"feature {json_name(name)} must be true or false (or 0/1), got {json_text(v)}",
        )

    def build(self, rows: list[list[Any]]) -> dict[str, np.ndarray]:
        """Graph inputs for already-validated rows."""
        if self.all_numeric and len(self._input_plan) == 1:
            name, _, _ = self._input_plan[0]
            return {name: np.array(rows, dtype=np.float32)}
        feeds: dict[str, np.ndarray] = {}
        for name, dtype, cols in self._input_plan:
            if dtype == "float32":
                feeds[name] = np.array([[r[c] for c in cols] for r in rows], dtype=np.float32)
            else:
                feeds[name] = np.array([[r[c] for c in cols] for r in rows], dtype=object)
        return feeds

    def numeric_matrix(self, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
        """The numeric features (model order) of a batch, for drift monitoring."""
        if self.all_numeric and len(self._input_plan) == 1:
            return feeds[self._input_plan[0][0]]
        parts = [feeds[name] for name, dtype, _ in self._input_plan if dtype == "float32"]
        if not parts:
            return None
        return np.concatenate(parts, axis=1)[:, self._numeric_perm]

    def run(self, feeds: dict[str, np.ndarray]) -> Outputs:
        results = self.session.run(self._output_names, feeds)
        if self.is_classifier:
            return Outputs(labels=results[0], probabilities=results[1], values=None)
        return Outputs(labels=None, probabilities=None, values=results[0].reshape(-1))

    def score(self, out: Outputs) -> np.ndarray:
        """One number per row for output drift: P(positive), max P, or the value."""
        if out.values is not None:
            return out.values.astype(np.float64)
        probs = out.probabilities
        assert probs is not None
        if probs.shape[1] == 2:
            return probs[:, 1].astype(np.float64)
        return probs.max(axis=1).astype(np.float64)

    def predictions(self, out: Outputs) -> list[Any]:
        """Every row's prediction as the plain Python value row_result() puts in
        "prediction" (one tolist() per batch instead of one conversion per row)."""
        if out.values is not None:
            return out.values.tolist()
        assert out.labels is not None
        return out.labels.tolist()

    def reply_fragments(self, out: Outputs) -> list[str] | None:
        """Per row, ``json.dumps(row_result(out, i), separators=(",", ":"))`` without its
        braces, byte for byte, built from one tolist() per batch: the per-row dict and
        the general-purpose encoder cost more than the inference itself. ``None`` when
        a value needs the general path (a non-finite output, an unusual label type),
        which then builds the reply, or the error reply, from row_result()."""
        preds = self.predictions(out)
        isfinite = math.isfinite
        if out.values is not None:
            if not all(map(isfinite, preds)):
                return None
            return [f'"prediction":{v!r}' for v in preds]
        assert out.probabilities is not None
        keys = self._class_json_keys
        frags = []
        for label, probs in zip(preds, out.probabilities.tolist(), strict=True):
            t = type(label)
            if t is int:
                lj = int.__repr__(label)
            elif t is str:
                lj = encode_basestring_ascii(label)
            else:
                return None
            if not all(map(isfinite, probs)):
                return None
            pj = ",".join([k + float.__repr__(p) for k, p in zip(keys, probs, strict=True)])
            frags.append(f'"prediction":{lj},"probabilities":{{{pj}}}')
        return frags

    def row_result(self, out: Outputs, i: int) -> dict[str, Any]:
        if out.values is not None:
            return {"prediction": float(out.values[i])}
        assert out.labels is not None and out.probabilities is not None
        label = out.labels[i]
        prediction = label.item() if hasattr(label, "item") else label
        probs = out.probabilities[i].tolist()
        return {
            "prediction": prediction,
            "probabilities": dict(zip(self._class_keys, probs, strict=True)),
        }
