"""The ONNX parity gate: onnxruntime must reproduce scikit-learn on held-out rows.

Thresholds: identical labels, probabilities within 1e-4 (max abs), regression
values within 1e-4 relative. A label may legitimately differ where scikit-learn's
two best probabilities are themselves tied within the probability tolerance
(e.g. a 50/50 vote in a random forest): float32 sums in onnxruntime break the tie
either way. Such rows are counted separately and do not fail the gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from edgeloop_control.training.columns import feature_frame, numeric_values
from edgeloop_control.training.errors import InputError, ParityError
from edgeloop_control.training.predictor import OnnxPredictor

PROB_TOLERANCE = 1e-4
REL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityReport:
    task: str
    n_rows: int
    passed: bool
    # Classification (None for regression).
    label_mismatches: int | None = None
    label_mismatches_at_ties: int | None = None
    max_prob_diff: float | None = None
    # Regression (None for classification): max |onnx - sklearn| / max(|sklearn|, spread),
    # spread = std of the scikit-learn predictions, so values near zero are not
    # judged by a vanishing denominator.
    max_rel_diff: float | None = None
    prob_tolerance: float = PROB_TOLERANCE
    rel_tolerance: float = REL_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(
    pipeline: Pipeline,
    model: bytes | OnnxPredictor,
    frame: pd.DataFrame,
    *,
    prob_tolerance: float = PROB_TOLERANCE,
    rel_tolerance: float = REL_TOLERANCE,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compare ``pipeline`` and the ONNX ``model`` on ``frame`` (raw feature columns).

    Both sides see the same values: the frame goes through the input builder the
    agent mirrors, and the pipeline gets those float32/str values back as a frame.
    Raises :class:`ParityError` carrying the report unless ``raise_on_failure`` is
    false.
    """
    predictor = model if isinstance(model, OnnxPredictor) else OnnxPredictor(model)
    meta = predictor.meta
    if len(frame) == 0:
        raise InputError("parity needs at least one row")
    numeric = [f for spec in meta.inputs if spec.dtype == "float32" for f in spec.features]
    categorical = [f for spec in meta.inputs if spec.dtype == "string" for f in spec.features]
    onnx_out = predictor.predict(frame)
    sk_input = feature_frame(frame, numeric, categorical)
    n = len(frame)

    if meta.task == "classification":
        sk_proba = np.asarray(pipeline.predict_proba(sk_input), dtype=np.float64)
        sk_label = np.asarray(pipeline.predict(sk_input))
        assert onnx_out.probabilities is not None and onnx_out.label is not None
        if sk_proba.shape != onnx_out.probabilities.shape:
            raise ParityError(
                f"ONNX parity failed: probabilities have shape {onnx_out.probabilities.shape}, "
                f"scikit-learn gives {sk_proba.shape}",
                {"task": meta.task, "n_rows": n, "passed": False},
            )
        mismatch = onnx_out.label != sk_label
        ranked = np.sort(sk_proba, axis=1)
        tied = ranked[:, -1] - ranked[:, -2] <= prob_tolerance
        max_prob_diff = float(np.abs(onnx_out.probabilities - sk_proba).max())
        report = ParityReport(
            task=meta.task,
            n_rows=n,
            passed=bool(max_prob_diff <= prob_tolerance and not (mismatch & ~tied).any()),
            label_mismatches=int(mismatch.sum()),
            label_mismatches_at_ties=int((mismatch & tied).sum()),
            max_prob_diff=max_prob_diff,
            prob_tolerance=prob_tolerance,
            rel_tolerance=rel_tolerance,
        )
        detail = (
            f"{report.label_mismatches} label mismatches "
            f"({report.label_mismatches_at_ties} at probability ties), "
            f"max |prob diff| {max_prob_diff:.3g} (limit {prob_tolerance:g})"
        )
    else:
        sk_value = np.asarray(pipeline.predict(sk_input), dtype=np.float64).reshape(-1)
        assert onnx_out.value is not None
        spread = float(np.std(sk_value)) if n > 1 else 0.0
        scale = np.maximum(np.maximum(np.abs(sk_value), spread), np.finfo(np.float64).tiny)
        rel = np.abs(onnx_out.value - sk_value) / scale
        # A NaN on either side is a failure, not something max() may skip.
        max_rel = float("inf") if np.isnan(rel).any() else float(rel.max())
        report = ParityReport(
            task=meta.task,
            n_rows=n,
            passed=bool(max_rel <= rel_tolerance),
            max_rel_diff=max_rel,
            prob_tolerance=prob_tolerance,
            rel_tolerance=rel_tolerance,
        )
        detail = f"max relative diff {max_rel:.3g} (limit {rel_tolerance:g})"

    if not report.passed and raise_on_failure:
        hint = _precision_hint(frame, numeric)
        raise ParityError(
            f"ONNX parity failed on {n} held-out rows: {detail}.{hint}", report.to_dict()
        )
    return report


def _precision_hint(frame: pd.DataFrame, numeric: list[str]) -> str:
    """Name numeric features whose float32 resolution is coarse next to their spread.

    A value like an epoch timestamp (1.7e9) varies by seconds but float32 only
    resolves 128 s there; ONNX computes in float32, so any arithmetic on such a
    column (scaling, linear terms) drifts from the float64 scikit-learn result.
    """
    coarse = []
    for name in numeric:
        values = numeric_values(frame[name], name).astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size < 2:
            continue
        spread = float(np.std(values))
        resolution = float(np.spacing(np.float32(np.abs(values).max())))
        if spread > 0 and resolution > 1e-5 * spread:
            coarse.append(name)
    if not coarse:
        return ""
    return (
        f" Numeric feature(s) {coarse} have a large offset next to their spread, which "
        "float32 cannot resolve; centre or rescale them (e.g. age instead of epoch seconds)."
    )
