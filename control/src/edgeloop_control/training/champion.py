"""The champion gate: a challenger replaces the champion only if it does better
on the *same* held-out rows.

The champion exists only as ONNX bytes, so both models are scored from their ONNX
outputs through the same input builder. A challenger given as a metrics mapping
must carry the ``holdout_hash`` of the frame it was scored on; metrics from
another holdout are refused rather than compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from edgeloop_control.training.errors import ChampionError
from edgeloop_control.training.hashing import frame_hash
from edgeloop_control.training.metrics import (
    CLASSIFICATION_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    evaluate,
)
from edgeloop_control.training.predictor import OnnxPredictor

if TYPE_CHECKING:
    from edgeloop_control.training.train import TrainResult


@dataclass(frozen=True)
class ChampionComparison:
    passed: bool
    reason: str
    metric: str
    margin: float
    higher_is_better: bool
    candidate_value: float | None
    champion_value: float | None
    candidate_metrics: dict[str, Any]
    champion_metrics: dict[str, Any]
    n_rows: int
    holdout_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_to_champion(
    candidate: TrainResult | bytes | OnnxPredictor | Mapping[str, Any],
    champion: bytes | OnnxPredictor,
    holdout: pd.DataFrame,
    *,
    metric: str = "f1",
    margin: float = 0.0,
    target: str | None = None,
) -> ChampionComparison:
    """Score challenger and champion on ``holdout`` and decide.

    Passes when the challenger is at least ``margin`` better: ``cand >= champ +
    margin`` for metrics where higher is better (accuracy, f1, roc_auc, r2),
    ``cand <= champ - margin`` otherwise (log_loss, mae, rmse). ``margin=0`` lets a
    tie pass; a negative margin tolerates a regression of up to ``|margin|``.
    ``target`` defaults to the one recorded in the challenger's metadata.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ChampionError(
            f"unknown metric {metric!r}; choose one of {', '.join(HIGHER_IS_BETTER)}"
        )
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float))
        or not math.isfinite(margin)
    ):
        raise ChampionError(f"margin must be a finite number, got {margin!r}")
    champion_predictor = (
        champion if isinstance(champion, OnnxPredictor) else OnnxPredictor(champion)
    )
    holdout_hash = frame_hash(holdout)

    candidate_predictor: OnnxPredictor | None = None
    candidate_metrics: dict[str, Any]
    if isinstance(candidate, (bytes, OnnxPredictor)):
        candidate_predictor = (
            candidate if isinstance(candidate, OnnxPredictor) else OnnxPredictor(candidate)
        )
    elif isinstance(candidate, Mapping):
        recorded = candidate.get("holdout_hash")
        if recorded != holdout_hash:
            raise ChampionError(
                "the challenger's metrics were not computed on this holdout "
                f"(their holdout_hash is {recorded!r}, this frame hashes to {holdout_hash}); "
                "pass the challenger model instead so both are scored on the same rows"
            )
    else:  # a TrainResult; imported lazily to keep the module graph acyclic
        candidate_predictor = OnnxPredictor(candidate.onnx_bytes)

    if target is None:
        meta = candidate_predictor.meta if candidate_predictor else None
        target = (meta.extra.get("target") if meta else None) or (
            champion_predictor.meta.extra.get("target")
        )
    if not isinstance(target, str) or target not in holdout.columns:
        raise ChampionError(f"the holdout has no target column {target!r}; pass target=")

    task = champion_predictor.meta.task
    if candidate_predictor is not None:
        _check_comparable(candidate_predictor, champion_predictor)
        candidate_metrics = evaluate(candidate_predictor, holdout, target)
    else:
        assert isinstance(candidate, Mapping)
        candidate_metrics = dict(candidate)
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if metric not in allowed:
        raise ChampionError(
            f"metric {metric!r} does not apply to {task}; choose one of {', '.join(allowed)}"
        )
    if metric not in candidate_metrics:
        raise ChampionError(f"the challenger's metrics have no {metric!r}")
    champion_metrics = evaluate(champion_predictor, holdout, target)

    higher = HIGHER_IS_BETTER[metric]
    cand = candidate_metrics.get(metric)
    champ = champion_metrics.get(metric)
    if cand is None or champ is None:
        side = "challenger" if cand is None else "champion"
        passed = False
        reason = f"{metric} is undefined for the {side} on this holdout; cannot compare"
    else:
        cand, champ = float(cand), float(champ)
        if higher:
            passed = cand >= champ + margin
            need = f">= {champ + margin:.6g} (champion {champ:.6g} + margin {margin:g})"
        else:
            passed = cand <= champ - margin
            need = f"<= {champ - margin:.6g} (champion {champ:.6g} - margin {margin:g})"
        reason = f"challenger {metric} {cand:.6g} {'meets' if passed else 'misses'} {need}"
    return ChampionComparison(
        passed=passed,
        reason=reason,
        metric=metric,
        margin=float(margin),
        higher_is_better=higher,
        candidate_value=None if cand is None else float(cand),
        champion_value=None if champ is None else float(champ),
        candidate_metrics=candidate_metrics,
        champion_metrics=dict(champion_metrics),
        n_rows=int(champion_metrics["n"] or 0),
        holdout_hash=holdout_hash,
    )


def _check_comparable(candidate: OnnxPredictor, champion: OnnxPredictor) -> None:
    if candidate.meta.task != champion.meta.task:
        raise ChampionError(
            f"the challenger is a {candidate.meta.task} model, the champion a "
            f"{champion.meta.task} model"
        )
    if candidate.meta.task == "classification" and (
        set(candidate.meta.classes or ()) != set(champion.meta.classes or ())
    ):
        raise ChampionError(
            f"the challenger predicts classes {list(candidate.meta.classes or ())}, the "
            f"champion {list(champion.meta.classes or ())}; their metrics are not comparable"
        )
