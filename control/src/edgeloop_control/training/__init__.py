"""Training pipeline: scikit-learn pipelines exported to ONNX, verified and evaluated.

Typical use::

    result = train(frame, TrainConfig(target="churned", algo="hgb", timestamp="ts"))
    result.onnx_bytes      # registrable: ModelMeta embedded, parity checked
    verdict = compare_to_champion(result, champion_bytes, result.holdout_frame)
"""

from edgeloop_control.training.champion import ChampionComparison, compare_to_champion
from edgeloop_control.training.config import ALGORITHMS, TrainConfig
from edgeloop_control.training.errors import (
    ChampionError,
    InputError,
    ParityError,
    TrainConfigError,
    TrainingError,
)
from edgeloop_control.training.export import ML_OPSET, OPSET, export_onnx
from edgeloop_control.training.hashing import frame_hash
from edgeloop_control.training.metrics import evaluate
from edgeloop_control.training.parity import ParityReport, check_parity
from edgeloop_control.training.pipelines import build_pipeline
from edgeloop_control.training.predictor import OnnxPredictor, Prediction, build_inputs
from edgeloop_control.training.train import PreparedData, TrainResult, fit, prepare, train

__all__ = [
    "ALGORITHMS",
    "ML_OPSET",
    "OPSET",
    "ChampionComparison",
    "ChampionError",
    "InputError",
    "OnnxPredictor",
    "ParityError",
    "ParityReport",
    "Prediction",
    "PreparedData",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingError",
    "build_inputs",
    "build_pipeline",
    "check_parity",
    "compare_to_champion",
    "evaluate",
    "export_onnx",
    "fit",
    "frame_hash",
    "prepare",
    "train",
]
