"""What to train: the user's choices, validated before any data is touched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeloop_control.training.errors import TrainConfigError

ALGORITHMS: tuple[str, ...] = ("logreg", "rf", "hgb")
TASK_CHOICES: tuple[str, ...] = ("auto", "classification", "regression")
SPLIT_CHOICES: tuple[str, ...] = ("auto", "time", "random")
# How classifiers are calibrated on the holdout for the agents' label-free performance
# estimate (training/calibration.py): auto = isotonic from 1,000 holdout rows, else Platt.
CALIBRATION_CHOICES: tuple[str, ...] = ("auto", "isotonic", "sigmoid", "none")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``features=None`` uses every column except the target, the timestamp and
    ``exclude``. ``params`` override the estimator's hyper-parameters (names as in
    scikit-learn). ``holdout`` is the fraction of rows kept for evaluation and the
    ONNX parity gate: the most recent ones when ``timestamp`` is given, otherwise
    a seeded random (stratified for classification) sample.
    """

    target: str
    features: list[str] | None = None
    algo: str = "rf"
    task: str = "auto"
    seed: int = 0
    holdout: float = 0.2
    timestamp: str | None = None
    split: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    # A string column with more distinct values than this is almost always an
    # identifier or free text: one-hot encoding it bloats the model and overfits.
    max_categories: int = 100
    # Threads for scikit-learn's OpenMP/BLAS pools during the fit (None: library
    # default, all cores). One by default: on a 2-core node shared with the broker,
    # spinning OpenMP threads made HistGradientBoosting 4-18x slower under load, and
    # a fixed count keeps floating-point reductions independent of the machine.
    n_threads: int | None = 1
    calibration: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise TrainConfigError(f"target must be a non-empty column name, got {self.target!r}")
        if self.algo not in ALGORITHMS:
            raise TrainConfigError(
                f"unknown algo {self.algo!r}; choose one of {', '.join(ALGORITHMS)}"
            )
        if self.task not in TASK_CHOICES:
            raise TrainConfigError(
                f"unknown task {self.task!r}; choose one of {', '.join(TASK_CHOICES)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise TrainConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if (
            isinstance(self.holdout, bool)
            or not isinstance(self.holdout, (int, float))
            or not 0.0 < float(self.holdout) < 1.0
        ):
            raise TrainConfigError(
                f"holdout must be a fraction strictly between 0 and 1, got {self.holdout!r} "
                "(the parity gate and the evaluation both need held-out rows)"
            )
        if self.calibration not in CALIBRATION_CHOICES:
            raise TrainConfigError(
                f"unknown calibration {self.calibration!r}; "
                f"choose one of {', '.join(CALIBRATION_CHOICES)}"
            )
        if self.split not in SPLIT_CHOICES:
            raise TrainConfigError(
                f"unknown split {self.split!r}; choose one of {', '.join(SPLIT_CHOICES)}"
            )
        if self.split == "time" and self.timestamp is None:
            raise TrainConfigError(
                "split 'time' needs an event timestamp column; give one or use split 'random'"
            )
        if self.timestamp is not None and (
            not isinstance(self.timestamp, str) or not self.timestamp
        ):
            raise TrainConfigError(
                f"timestamp must be a column name or None, got {self.timestamp!r}"
            )
        if self.features is not None:
            _check_names(self.features, "features")
            if not self.features:
                raise TrainConfigError("features is an empty list; pass None to use every column")
        _check_names(self.exclude, "exclude")
        if not isinstance(self.params, Mapping) or not all(isinstance(k, str) for k in self.params):
            raise TrainConfigError("params must be a mapping of parameter names to values")
        if (
            isinstance(self.max_categories, bool)
            or not isinstance(self.max_categories, int)
            or self.max_categories < 1
        ):
            raise TrainConfigError(
                f"max_categories must be a positive integer, got {self.max_categories!r}"
            )
        if self.n_threads is not None and (
            isinstance(self.n_threads, bool)
            or not isinstance(self.n_threads, int)
            or self.n_threads < 1
        ):
            raise TrainConfigError(
                f"n_threads must be a positive integer or None, got {self.n_threads!r}"
            )


def _check_names(names: Sequence[str], what: str) -> None:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TrainConfigError(f"{what} must be a list of column names, got {names!r}")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise TrainConfigError(f"{what} must hold non-empty column names, got {bad!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TrainConfigError(f"{what} repeats column(s): {', '.join(dupes)}")
