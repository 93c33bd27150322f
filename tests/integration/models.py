"""Real models for integration tests, trained by the product's own pipeline."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from edgeloop_control.demo.sensors import FEATURES, generate
from edgeloop_control.training import TrainConfig, train


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    data: bytes
    features: list[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    signature: str | None = None

    def entry(self, *, weight: float = 100, role: str = "serve", signature: str | None = None):
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "signature": signature if signature is not None else self.signature,
            "role": role,
            "weight": weight if role == "serve" else 0,
        }


@functools.cache
def sensor_model(version: str = "v1", algo: str = "logreg", seed: int = 0) -> Artifact:
    frame = generate(1500, seed=seed).drop(columns=["pump_id"])
    result = train(
        frame,
        TrainConfig(
            target="fault",
            algo=algo,
            timestamp="ts",
            seed=seed,
            params={"n_estimators": 20} if algo == "rf" else {},
        ),
    )
    return Artifact("sensor", version, result.onnx_bytes, list(FEATURES))


def sample_features(n: int = 1, seed: int = 99) -> list[dict[str, float]]:
    frame = generate(n, seed=seed)
    return [{k: float(row[k]) for k in FEATURES} for _, row in frame.iterrows()]


@functools.cache
def strict_model(version: str = "v1") -> Artifact:
    """A real logistic regression without an imputer: it must refuse NaN."""
    import numpy as np
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    from edgeloop_agent.wire.modelmeta import FeatureSpec, InputSpec, ModelMeta

    names = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    clf = LogisticRegression().fit(X, y)
    model = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 3]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    meta = ModelMeta(
        task="classification",
        features=tuple(FeatureSpec(n) for n in names),
        inputs=(InputSpec("input", "float32", tuple(names)),),
        outputs={"label": "label", "probabilities": "probabilities"},
        classes=(0, 1),
        handles_missing=False,
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgeloop", meta.to_json()
    return Artifact("strict", version, model.SerializeToString(), names)
