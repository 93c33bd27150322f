"""Exceptions raised by the training pipeline.

All of them are ``ValueError`` subclasses: each one means the data, the
configuration or an artifact is not acceptable, never that the code is broken.
"""

from __future__ import annotations

from typing import Any

from edgeloop_control.errors import ConfigError, EdgeloopError


class TrainingError(EdgeloopError, ValueError):
    """The data or the configuration cannot produce a model."""


class TrainConfigError(TrainingError, ConfigError):
    """A training setting (algorithm, holdout, columns, parameters) that cannot be used."""


class InputError(TrainingError):
    """A frame cannot be turned into the ONNX inputs a model expects."""


class ChampionError(TrainingError):
    """A challenger and a champion cannot be compared meaningfully."""


class ParityError(TrainingError):
    """onnxruntime does not reproduce scikit-learn on the held-out rows.

    ``report`` holds the measured figures (see :class:`ParityReport`), so the
    caller can log them or show them without parsing the message.
    """

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report
