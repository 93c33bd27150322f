"""scikit-learn pipeline -> ONNX bytes with the edgeloop metadata embedded.

The graph takes up to two inputs: ``numeric`` (float32 [N, k], the numeric
features in the order listed in the metadata) and ``categorical`` (string [N, m]).
Classifiers are exported with ``zipmap=False``, so they output ``label`` [N] and
``probabilities`` [N, n_classes] in ``classes`` order; regressors output
``variable`` [N, 1].

Everything written into the file is a function of the pipeline and the
arguments: the graph name and producer fields are fixed strings (skl2onnx would
otherwise name the graph with a random UUID) and nothing records a clock, so the
same fitted pipeline always exports to the same bytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.base import is_classifier
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from edgeloop_agent.wire.modelmeta import META_KEY, FeatureSpec, FeatureType, InputSpec, ModelMeta
from edgeloop_control import __version__
from edgeloop_control.training.errors import TrainingError

# Opset 17 / ai.onnx.ml 3 is all these pipelines need, and every onnxruntime the
# agent accepts (>= 1.17) runs it. A fixed opset also keeps the bytes stable when
# skl2onnx is upgraded.
OPSET = 17
ML_OPSET = 3
TARGET_OPSET: dict[str, int] = {"": OPSET, "ai.onnx.ml": ML_OPSET}

NUMERIC_INPUT = "numeric"
STRING_INPUT = "categorical"
PRODUCER_NAME = "edgeloop-control"
GRAPH_NAME = "edgeloop_model"


def export_onnx(
    pipeline: Pipeline,
    feature_names: Sequence[str],
    categorical_features: Sequence[str] = (),
    *,
    boolean_features: Sequence[str] = (),
    profile: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    doc_string: str = "",
    calibration: dict[str, Any] | None = None,
) -> bytes:
    """Export a fitted pipeline and embed its :class:`ModelMeta`.

    ``feature_names`` is the request order of all features; ``categorical_features``
    says which of them are strings, ``boolean_features`` which numeric ones were
    booleans (the metadata marks them ``bool``, so an agent accepts JSON true/false
    for them; the graph still takes them as 1.0/0.0 in the float32 input). The
    pipeline must have been fitted on the numeric features (in that order) followed
    by the categorical ones.
    """
    features = list(feature_names)
    categorical_set = set(categorical_features)
    unknown = sorted(categorical_set - set(features))
    if unknown:
        raise TrainingError(f"categorical features {unknown} are not in feature_names")
    numeric = [f for f in features if f not in categorical_set]
    boolean_set = set(boolean_features)
    if boolean_set - set(numeric):
        raise TrainingError(
            f"boolean features {sorted(boolean_set - set(numeric))} are not numeric features"
        )
    categorical = [f for f in features if f in categorical_set]
    fitted_on = getattr(pipeline, "feature_names_in_", None)
    if fitted_on is not None and list(fitted_on) != numeric + categorical:
        raise TrainingError(
            f"the pipeline was fitted on columns {list(fitted_on)}, but the export expects "
            f"the numeric features then the categorical ones: {numeric + categorical}"
        )
    initial_types: list[tuple[str, Any]] = []
    inputs: list[InputSpec] = []
    if numeric:
        initial_types.append((NUMERIC_INPUT, FloatTensorType([None, len(numeric)])))
        inputs.append(InputSpec(NUMERIC_INPUT, "float32", tuple(numeric)))
    if categorical:
        initial_types.append((STRING_INPUT, StringTensorType([None, len(categorical)])))
        inputs.append(InputSpec(STRING_INPUT, "string", tuple(categorical)))

    classifier = is_classifier(pipeline)
    estimator = pipeline[-1]
    options = {id(estimator): {"zipmap": False}} if classifier else None
    try:
        with warnings.catch_warnings():
            # skl2onnx 1.20 writes HistGradientBoosting's missing-value flags as Python
            # bools into an int list; protobuf 6 warns, protobuf 7 refuses (hence the
            # protobuf<7 pin). The warning is known and pinned against: keep it quiet.
            warnings.filterwarnings(
                "ignore", message=".*Expected an int, got a boolean", category=DeprecationWarning
            )
            model = convert_sklearn(
                pipeline,
                name=GRAPH_NAME,
                initial_types=initial_types,
                target_opset=TARGET_OPSET,
                options=options,
            )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/NotImplementedError
        raise TrainingError(
            f"skl2onnx cannot export {type(estimator).__name__}: {type(exc).__name__}: {exc}"
        ) from exc

    output_names = [o.name for o in model.graph.output]
    if classifier:
        if output_names != ["label", "probabilities"]:
            raise TrainingError(f"unexpected classifier outputs {output_names}")
        outputs = {"label": "label", "probabilities": "probabilities"}
        classes: tuple[Any, ...] | None = tuple(_plain(c) for c in pipeline.classes_)
    else:
        if len(output_names) != 1:
            raise TrainingError(f"unexpected regressor outputs {output_names}")
        outputs = {"value": output_names[0]}
        classes = None

    meta = ModelMeta(
        task="classification" if classifier else "regression",
        features=tuple(FeatureSpec(f, _dtype(f, categorical_set, boolean_set)) for f in features),
        inputs=tuple(inputs),
        outputs=outputs,
        classes=classes,
        handles_missing=handles_missing(pipeline),
        profile=profile,
        extra=dict(extra or {}),
        calibration=calibration,
    )
    meta_json = meta.to_json()
    # Round-trip through the agent's parser: a file the agent would reject must
    # not leave the control node.
    ModelMeta.from_json(meta_json)

    model.producer_name = PRODUCER_NAME
    model.producer_version = __version__
    model.doc_string = doc_string
    model.graph.doc_string = ""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = META_KEY
    entry.value = meta_json
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _dtype(name: str, categorical: set[str], boolean: set[str]) -> FeatureType:
    if name in categorical:
        return "string"
    return "bool" if name in boolean else "float"


def embed_calibration(onnx_bytes: bytes, calibration: dict[str, Any]) -> bytes:
    """The same model with ``calibration`` added to its metadata (the graph is untouched).

    Training fits the map on the exported model's own probabilities (float32, as devices
    compute them: a random forest's 0.5 tie can fall either side of scikit-learn's), so it
    is added after the export rather than passed to :func:`export_onnx`.
    """
    model = onnx.load_from_string(onnx_bytes)
    [entry] = [e for e in model.metadata_props if e.key == META_KEY]
    meta = ModelMeta.from_json(entry.value)
    entry.value = replace(meta, calibration=calibration).to_json()
    ModelMeta.from_json(entry.value)
    return model.SerializeToString()


def handles_missing(pipeline: Pipeline) -> bool:
    """True when every numeric column tolerates NaN (imputed or natively handled).

    Categorical columns always do: a missing string is sent as ``""``, which one-hot
    encoding sees as one more (possibly unknown, hence ignored) category.
    """
    if isinstance(pipeline[-1], (HistGradientBoostingClassifier, HistGradientBoostingRegressor)):
        return True
    preprocess = pipeline[0]
    for name, transformer, columns in getattr(preprocess, "transformers_", []):
        if name != "numeric" or not len(columns):
            continue
        steps = transformer.steps if isinstance(transformer, Pipeline) else [(name, transformer)]
        return isinstance(steps[0][1], SimpleImputer)
    return True


def opset_of(onnx_bytes: bytes) -> dict[str, int]:
    """The opsets a model imports, keyed by domain ("ai.onnx" for the default one)."""
    model = onnx.load_from_string(onnx_bytes)
    return {(d.domain or "ai.onnx"): int(d.version) for d in model.opset_import}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
