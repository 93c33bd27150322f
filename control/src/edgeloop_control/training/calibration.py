"""Calibration maps fitted on the holdout, for label-free performance estimation on devices.

The agent estimates a window's accuracy (and, for binary models, ROC AUC) from its own
probabilities (``edgeloop_agent.wire.calibration``); that is only as good as the
probabilities are calibrated. Here, at training time, a monotone map per class (one on
P(positive) for a binary model) is fitted on the held-out rows' out-of-sample
probabilities: isotonic regression, or Platt scaling (a logistic fit on logit(p)) when the
holdout is too small for isotonic regression to be stable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from edgeloop_agent.wire.calibration import (
    LOGIT_CLIP,
    MAX_AUC_EDGES,
    MAX_BREAKPOINTS,
    MAX_CLASSES,
    Calibration,
    estimate,
)

# scikit-learn's advice: isotonic regression overfits below about a thousand rows.
ISOTONIC_MIN_ROWS = 1000


def fit_calibration(
    proba: np.ndarray, y: np.ndarray, classes: list[Any], method: str = "auto"
) -> dict[str, Any] | None:
    """The metadata's ``calibration`` section, or None (``method="none"``, a regressor-like
    input, too many classes, or a holdout missing a class: nothing sound to fit)."""
    if method == "none" or len(classes) < 2 or len(classes) > MAX_CLASSES:
        return None
    if method == "auto":
        method = "isotonic" if len(y) >= ISOTONIC_MIN_ROWS else "sigmoid"
    proba = np.asarray(proba, dtype=np.float64)
    binary = len(classes) == 2
    columns = [1] if binary else list(range(len(classes)))
    maps = []
    for k in columns:
        hit = (y == classes[k]).astype(np.float64)
        if hit.min() == hit.max():
            return None  # a class absent from (or alone in) the holdout: no map to learn
        maps.append(_fit_one(proba[:, k], hit, method))
    edges: list[float] = []
    if binary:
        cuts = np.quantile(proba[:, 1], np.linspace(0.0, 1.0, MAX_AUC_EDGES + 2)[1:-1])
        edges = np.unique(cuts).tolist()
    section: dict[str, Any] = {
        "version": 1,
        "method": method,
        "binary": binary,
        "maps": maps,
        "auc_edges": edges,
        "reference": {},
    }
    cal = Calibration.from_dict(section, len(classes))  # what the agent will accept
    reference = estimate(cal, proba)
    section["reference"] = {k: v for k, v in reference.items() if math.isfinite(v)}
    return section


def _fit_one(p: np.ndarray, hit: np.ndarray, method: str) -> dict[str, Any]:
    if method == "sigmoid":
        q = np.clip(p, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
        z = np.log(q / (1.0 - q)).reshape(-1, 1)
        fit = LogisticRegression(C=1e6).fit(z, hit)
        return {"a": float(fit.coef_[0, 0]), "b": float(fit.intercept_[0])}
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, hit)
    x, y = iso.X_thresholds_, iso.y_thresholds_
    if x.size > MAX_BREAKPOINTS:
        # Thinned to a bounded size: the map stays monotone and the metadata small.
        keep = np.unique(np.linspace(0, x.size - 1, MAX_BREAKPOINTS).round().astype(int))
        x, y = x[keep], y[keep]
    return {"x": [float(v) for v in x], "y": [float(v) for v in y]}
