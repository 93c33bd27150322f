"""The calibration map a classifier carries, and the label-free performance estimate it allows.

Training fits a calibration map on the holdout (isotonic or Platt, one per class, or one on
P(positive) for a binary model) and ships it in the model metadata (``ModelMeta.calibration``).
With calibrated probabilities ``c``, the agent estimates per window, before any label
arrives (confidence-based performance estimation, CBPE, as NannyML calls it):

* **expected accuracy** = mean over rows of the calibrated probability of the class the
  model predicts (the argmax of its raw probabilities). If ``c`` is calibrated, each row is
  correct with probability ``c``, so this is E[accuracy | inputs].
* **expected ROC AUC** (binary): each row counts as a positive with weight ``c`` and as a
  negative with weight ``1 - c``, ranked by the model's raw score; the AUC of that weighted
  sample is the area under the expected ROC curve, i.e. E[Mann-Whitney numerator] /
  E[n_pos n_neg] (a ratio of expectations, as NannyML's CBPE computes ROC AUC:
  https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html).
  Rows are ranked by raw score binned at ``auc_edges`` (quantiles of the holdout's raw
  scores), so memory is fixed; pairs in the same bin count as ties (1/2), and
  :func:`auc_tie_bound` is the most that can move the estimate.

Both sides use these functions: training for the holdout reference, the agent per window.
Pure numpy; nothing here imports another agent module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edgeloop_agent.wire.jsontext import json_text

CALIBRATION_VERSION = 1
MAX_BREAKPOINTS = 256  # per isotonic map; training thins longer maps
MAX_CLASSES = 64
MAX_AUC_EDGES = 255
LOGIT_CLIP = 1e-6  # Platt works on logit(p); p is clipped to [eps, 1 - eps] first

Method = Literal["isotonic", "sigmoid"]
Floats = npt.NDArray[np.float64]


class CalibrationError(ValueError):
    """A calibration section that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Calibration:
    """One map per class (``binary``: one map, on P(classes[1]))."""

    method: Method
    binary: bool
    # isotonic: (x, y) breakpoints, interpolated linearly and clipped at the ends;
    # sigmoid: (a, b) with c = 1 / (1 + exp(-(a * logit(p) + b))).
    maps: tuple[tuple[Floats, Floats], ...]
    # Raw-score bin edges for the AUC estimate (binary only; empty otherwise).
    auc_edges: Floats
    # The estimate on the holdout the map was fitted on: {"accuracy": .., "roc_auc": .., "n": ..}
    reference: dict[str, float]

    # -- applying ------------------------------------------------------------------

    def calibrate(self, proba: npt.ArrayLike) -> Floats:
        """Calibrated probabilities, shape (n, n_classes), rows summing to 1."""
        p = np.asarray(proba, dtype=np.float64)
        if p.ndim != 2:
            raise CalibrationError(f"probabilities: expected shape (n, k), got {p.shape}")
        if self.binary:
            if p.shape[1] != 2:
                raise CalibrationError(f"a binary map needs 2 columns, got {p.shape[1]}")
            c1 = self._apply(0, p[:, 1])
            return np.stack([1.0 - c1, c1], axis=1)
        if p.shape[1] != len(self.maps):
            raise CalibrationError(f"{len(self.maps)} class maps for {p.shape[1]} columns")
        c = np.empty_like(p)
        for k in range(p.shape[1]):
            c[:, k] = self._apply(k, p[:, k])
        total = c.sum(axis=1, keepdims=True)
        # One-vs-rest maps do not sum to 1; renormalised as scikit-learn's
        # CalibratedClassifierCV does (a row of zeros becomes uniform).
        with np.errstate(invalid="ignore", divide="ignore"):
            normalised: Floats = np.where(total > 0, c / total, 1.0 / p.shape[1])
        return normalised

    def _apply(self, k: int, p: Floats) -> Floats:
        first, second = self.maps[k]
        if self.method == "isotonic":
            out: Floats = np.interp(p, first, second)
            return out
        a, b = float(first[0]), float(second[0])
        q = np.clip(p, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
        return 1.0 / (1.0 + np.exp(-(a * np.log(q / (1.0 - q)) + b)))

    def auc_bins(self, score: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Bin of each raw P(positive): 0 .. len(auc_edges), ascending with the score."""
        return np.searchsorted(self.auc_edges, np.asarray(score, np.float64), side="right")

    @property
    def n_auc_bins(self) -> int:
        return int(self.auc_edges.size + 1) if self.binary else 0

    # -- wire form -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        if self.method == "isotonic":
            maps = [{"x": x.tolist(), "y": y.tolist()} for x, y in self.maps]
        else:
            maps = [{"a": float(a[0]), "b": float(b[0])} for a, b in self.maps]
        return {
            "version": CALIBRATION_VERSION,
            "method": self.method,
            "binary": self.binary,
            "maps": maps,
            "auc_edges": self.auc_edges.tolist(),
            "reference": dict(self.reference),
        }

    @classmethod
    def from_dict(cls, data: Any, n_classes: int) -> Calibration:
        if not isinstance(data, dict):
            raise CalibrationError("calibration must be an object")
        if data.get("version") != CALIBRATION_VERSION:
            raise CalibrationError(
                f"calibration version {json_text(data.get('version'))} is not supported "
                f"(expected {CALIBRATION_VERSION})"
            )
        method = data.get("method")
        if method not in ("isotonic", "sigmoid"):
            raise CalibrationError(
                f"calibration.method must be isotonic or sigmoid, got {json_text(method)}"
            )
        binary = data.get("binary")
        if not isinstance(binary, bool) or (binary and n_classes != 2):
            raise CalibrationError("calibration.binary must be a boolean, true only for 2 classes")
        raw_maps = data.get("maps")
        want = 1 if binary else n_classes
        if not isinstance(raw_maps, list) or len(raw_maps) != want or want > MAX_CLASSES:
            raise CalibrationError(
                f"calibration.maps must be a list of {want} maps (<= {MAX_CLASSES})"
            )
        maps = tuple(_map(m, method, i) for i, m in enumerate(raw_maps))
        edges = _floats(data.get("auc_edges", []), "calibration.auc_edges", MAX_AUC_EDGES)
        if edges.size and (not binary or np.any(np.diff(edges) <= 0)):
            raise CalibrationError("calibration.auc_edges must be increasing, binary models only")
        reference = data.get("reference") or {}
        if not isinstance(reference, dict) or not all(
            isinstance(k, str) and _finite(v) for k, v in reference.items()
        ):
            raise CalibrationError("calibration.reference must map metric names to numbers")
        return cls(method, binary, maps, edges, {k: float(v) for k, v in reference.items()})


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _floats(value: Any, where: str, limit: int) -> Floats:
    if not isinstance(value, list) or len(value) > limit or not all(map(_finite, value)):
        raise CalibrationError(f"{where} must be a list of at most {limit} finite numbers")
    return np.asarray(value, dtype=np.float64)


def _map(item: Any, method: str, i: int) -> tuple[Floats, Floats]:
    where = f"calibration.maps[{i}]"
    if not isinstance(item, dict):
        raise CalibrationError(f"{where} must be an object")
    if method == "sigmoid":
        a, b = item.get("a"), item.get("b")
        if not (_finite(a) and _finite(b)):
            raise CalibrationError(f"{where} needs finite numbers a and b")
        return np.array([float(a)]), np.array([float(b)])  # type: ignore[arg-type]  # checked
    x = _floats(item.get("x"), f"{where}.x", MAX_BREAKPOINTS)
    y = _floats(item.get("y"), f"{where}.y", MAX_BREAKPOINTS)
    if x.size < 1 or x.size != y.size:
        raise CalibrationError(f"{where}: x and y must be non-empty and of equal length")
    if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise CalibrationError(f"{where}: x and y must be non-decreasing (an isotonic map)")
    if y[0] < 0.0 or y[-1] > 1.0:
        raise CalibrationError(f"{where}: y must lie in [0, 1]")
    return x, y


# -- the estimators ---------------------------------------------------------------------


def confidence(calibrated: Floats, raw: Floats) -> Floats:
    """Per row, the calibrated probability of the class the model predicts (raw argmax)."""
    pred = np.argmax(raw, axis=1)
    out: Floats = calibrated[np.arange(calibrated.shape[0]), pred]
    return out


def auc_weights(cal: Calibration, calibrated: Floats, raw: Floats) -> tuple[Floats, Floats]:
    """Per AUC bin, the sum of calibrated P(positive) and of P(negative) (binary only)."""
    bins = cal.auc_bins(raw[:, 1])
    pos = np.bincount(bins, weights=calibrated[:, 1], minlength=cal.n_auc_bins)
    neg = np.bincount(bins, weights=calibrated[:, 0], minlength=cal.n_auc_bins)
    return pos.astype(np.float64), neg.astype(np.float64)


def expected_auc(pos: Floats, neg: Floats) -> float:
    """Area under the expected ROC curve from per-bin weights, bins ascending in score.

    sum_b pos_b (neg below b + neg_b / 2) / (sum pos * sum neg): the Mann-Whitney form of
    the AUC with ties counted 1/2, on rows weighted c (positive) and 1 - c (negative).
    NaN when either total is 0.
    """
    p_tot, n_tot = float(pos.sum()), float(neg.sum())
    if p_tot <= 0.0 or n_tot <= 0.0:
        return math.nan
    below = np.cumsum(neg) - neg
    return float(np.dot(pos, below + 0.5 * neg) / (p_tot * n_tot))


def auc_tie_bound(pos: Floats, neg: Floats) -> float:
    """The most that ranking within bins could move :func:`expected_auc`: ties count 1/2,
    the truth is between 0 and 1, so the error is at most sum_b pos_b neg_b / (2 P N)."""
    p_tot, n_tot = float(pos.sum()), float(neg.sum())
    if p_tot <= 0.0 or n_tot <= 0.0:
        return math.nan
    return float(np.dot(pos, neg) / (2.0 * p_tot * n_tot))


def estimate(cal: Calibration, raw_proba: npt.ArrayLike) -> dict[str, float]:
    """The whole-sample estimate (training's holdout reference; tests' reference path)."""
    raw = np.asarray(raw_proba, dtype=np.float64)
    c = cal.calibrate(raw)
    out = {"accuracy": float(confidence(c, raw).mean()), "n": float(raw.shape[0])}
    if cal.binary:
        pos, neg = auc_weights(cal, c, raw)
        out["roc_auc"] = expected_auc(pos, neg)
    return out
