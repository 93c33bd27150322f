"""Label-free performance estimate per window (CBPE), streaming and in fixed memory.

``update(proba, now)`` takes a micro-batch of the model's raw class probabilities, applies
the model's calibration map (``edgeloop_agent.wire.calibration``) and adds, per pane, the
row count, the sum of the calibrated probability of the predicted class, and for binary
models the calibrated positive/negative weight per raw-score bin. Every completed window
yields a :class:`PerformanceEstimate`: expected accuracy (mean calibrated confidence) and,
for binary models, expected ROC AUC with its binning bound. Windows are cut exactly as
:class:`~edgeloop_agent.drift.monitor.DriftMonitor` cuts them for the same
:class:`WindowConfig` and clock, so each estimate lands on the drift window of the same
rows (same ``start``/``end``).

Memory: ``(n_panes + 2) x (2 + 2 x auc_bins) x 8`` bytes (256 bins, tumbling window: 8 KB).
The estimate is only as good as the calibration: it follows covariate shift (the inputs
move, P(y | x) stays) and cannot see concept shift (P(y | x) changes), which only labels
reveal (the concept-drift detectors). See docs/drift.md, "Performance estimation".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeloop_agent.drift.window import WindowConfig
from edgeloop_agent.wire.calibration import (
    Calibration,
    auc_tie_bound,
    confidence,
    expected_auc,
)
from edgeloop_agent.wire.jsontext import json_text


@dataclass(frozen=True)
class PerformanceEstimate:
    """One window's estimate; ``start``/``end`` as in the drift report of that window."""

    start: float
    end: float
    n: int
    accuracy: float
    roc_auc: float | None
    auc_tie_bound: float | None
    reference: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The window document's ``estimated`` field (JSON-ready; NaN becomes None)."""
        out: dict[str, Any] = {
            "metric": "accuracy",
            "value": _num(self.accuracy),
            "n": self.n,
            "reference": _num(self.reference.get("accuracy")),
            "method": "cbpe",
        }
        if self.roc_auc is not None:
            out["roc_auc"] = {
                "value": _num(self.roc_auc),
                "reference": _num(self.reference.get("roc_auc")),
                "tie_bound": _num(self.auc_tie_bound),
            }
        return out


class PerformanceEstimator:
    """River-style: :meth:`update` with each batch, :meth:`get` for the latest window."""

    def __init__(self, calibration: Calibration, window: WindowConfig | None = None) -> None:
        self.calibration = calibration
        self.window = WindowConfig() if window is None else window
        self._bins = calibration.n_auc_bins
        n_slots = 2 + 2 * self._bins  # rows, sum of confidence, positive bins, negative bins
        self._ring = np.zeros((self.window.n_panes, n_slots))
        self._pos = 0
        self._closed = 0
        self.current = np.zeros(n_slots)
        self._pane_id: int | None = None
        self._rows_seen = 0
        self._latest: PerformanceEstimate | None = None

    @property
    def nbytes(self) -> int:
        return int(self._ring.nbytes + self.current.nbytes)

    def get(self) -> PerformanceEstimate | None:
        """The latest completed window's estimate, if any."""
        return self._latest

    def update(self, proba: npt.ArrayLike, now: float | None = None) -> list[PerformanceEstimate]:
        """Add a batch of raw probabilities (n, n_classes); return completed windows."""
        rows = self._rows(proba)
        n = rows[0].shape[0]
        win = self.window
        out: list[PerformanceEstimate] = []
        if win.kind == "count":
            pane_rows = int(win.pane_size)
            pos = 0
            while pos < n:
                take = min(n - pos, pane_rows - int(self.current[0]))
                self.current += self._sums(rows, pos, pos + take)
                pos += take
                self._rows_seen += take
                if int(self.current[0]) == pane_rows:
                    self._close()
                    if self._closed >= win.n_panes:
                        end = self._rows_seen
                        out.append(self._estimate(end - int(win.size), end))
        else:
            t = time.time() if now is None else now
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise ValueError(
                    f"now: expected a finite timestamp in seconds, got {json_text(now)}"
                )
            pane = math.floor(t / win.pane_size)
            if self._pane_id is None:
                self._pane_id = pane
            elif pane > self._pane_id:
                out.extend(self._advance_to(pane))
            if n:
                self.current += self._sums(rows, 0, n)
                self._rows_seen += n
        if out:
            self._latest = out[-1]
        return out

    # -- internals ---------------------------------------------------------------

    def _rows(self, proba: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
        """Per row: calibrated confidence, AUC bin, calibrated P(positive), P(negative)."""
        try:
            raw = np.asarray(proba, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"proba: expected numeric probabilities: {exc}") from None
        if raw.ndim != 2:
            raise ValueError(f"proba: expected shape (n_rows, n_classes), got {raw.shape}")
        if raw.shape[0] == 0:
            empty = np.empty(0)
            return empty, empty, empty, empty
        cal = self.calibration.calibrate(raw)
        conf = confidence(cal, raw)
        if not self._bins:
            return conf, conf, conf, conf
        bins = self.calibration.auc_bins(raw[:, 1]).astype(np.float64)
        return conf, bins, cal[:, 1], cal[:, 0]

    def _sums(self, rows: tuple[npt.NDArray[np.float64], ...], a: int, b: int) -> np.ndarray:
        """Slot sums of rows a..b: count, confidence, then positive and negative bins."""
        conf, bins, c1, c0 = rows
        out = np.zeros_like(self.current)
        out[0] = b - a
        out[1] = conf[a:b].sum()
        if self._bins:
            idx = bins[a:b].astype(np.int64)
            out[2 : 2 + self._bins] = np.bincount(idx, c1[a:b], minlength=self._bins)
            out[2 + self._bins :] = np.bincount(idx, c0[a:b], minlength=self._bins)
        return out

    def _close(self) -> None:
        self._ring[self._pos] = self.current
        self._pos = (self._pos + 1) % self._ring.shape[0]
        self.current = np.zeros_like(self.current)
        self._closed += 1

    def _advance_to(self, pane: int) -> list[PerformanceEstimate]:
        """Time windows: close panes up to ``pane``, as DriftMonitor._advance_to does."""
        out: list[PerformanceEstimate] = []
        win = self.window
        assert self._pane_id is not None
        while self._pane_id < pane:
            self._close()
            self._pane_id += 1
            if self._ring[:, 0].sum() > 0:
                end = self._pane_id * win.pane_size
                out.append(self._estimate(end - win.size, end))
            elif self.current[0] == 0:
                self._pane_id = pane
        return out

    def _estimate(self, start: float, end: float) -> PerformanceEstimate:
        # Summed from the panes at each report (not kept as a running total): float sums
        # added and subtracted for weeks would drift.
        w = self._ring.sum(axis=0)
        n = round(float(w[0]))
        accuracy = float(w[1] / w[0]) if n else math.nan
        auc = bound = None
        if self._bins:
            pos, neg = w[2 : 2 + self._bins], w[2 + self._bins :]
            auc, bound = expected_auc(pos, neg), auc_tie_bound(pos, neg)
        return PerformanceEstimate(
            float(start), float(end), n, accuracy, auc, bound, self.calibration.reference
        )


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
