"""Concept drift from labelled feedback: error-rate change detectors.

Three River-style detectors (``update(error)``, then read ``drift_detected`` /
``warning_detected``); all restart their statistics after a drift so they describe
the new concept:

* :class:`HDDM_A` (recommended): Hoeffding-bound test, false alarms controlled by
  ``drift_confidence``.
* :class:`DDM`: the classic method, for parity with River/MOA. Its reference point is
  the running minimum of ``p + s``, an optimistic extreme, so false alarms accumulate
  with stream length (see ``docs/drift.md`` for measured rates).
* :class:`PageHinkley`: River's Page-Hinkley CUSUM; a much shorter delay for a small
  step after a long stable history, where HDDM_A is slow (docs/drift.md, section 6).

DDM: Gama, Medas, Castillo & Rodrigues, "Learning with Drift Detection", SBIA 2004.
Each labelled prediction is a Bernoulli trial (error or not). After ``i`` trials the
error rate is ``p_i`` with standard deviation ``s_i = sqrt(p_i (1 - p_i) / i)``. The
detector remembers the point where ``p + s`` was lowest, ``(p_min, s_min)``, and

* warns when ``p_i + s_i >= p_min + warning_threshold * s_min`` (default 2),
* signals drift when ``p_i + s_i >= p_min + drift_threshold * s_min`` (default 3),

after ``warm_start`` trials. On drift the statistics restart with the next update,
so the detector describes the new concept. The minimum is only recorded once at least
one error was seen (``s > 0``): with ``s_min = 0`` the very first error after a
perfect start would count as a drift.

HDDM_A: Frías-Blanco, Campo-Ávila, Ramos-Jiménez, Morales-Bueno, Ortiz-Díaz &
Caballero-Mota, "Online and Non-Parametric Drift Detection Methods Based on
Hoeffding's Bounds", IEEE TKDE 27(3), 2015 (the A-test). With ``X_n`` the error rate of
the ``n`` outcomes since the last drift and the cut point
``k = argmin_j (X_j + sqrt(ln(1/delta) / (2 j)))`` (latest on ties), it signals drift when

    X_n - X_k >= sqrt((n - k) / (2 k n) * ln(2 / delta))

with ``delta = drift_confidence`` (warning: ``warning_confidence``). By Hoeffding's
inequality a single such test on a stationary stream fires with probability below delta.

Usage::

    detector = HDDM_A()
    for y_true, y_pred in feedback:
        detector.update(y_true != y_pred)
        if detector.drift_detected:
            ...
"""

from __future__ import annotations

import math
import numbers

from edgeloop_agent.wire.jsontext import json_text


class DDM:
    """Drift Detection Method on a stream of prediction errors."""

    def __init__(
        self,
        warm_start: int = 30,
        warning_threshold: float = 2.0,
        drift_threshold: float = 3.0,
    ) -> None:
        if isinstance(warm_start, bool) or not isinstance(warm_start, int) or warm_start < 1:
            raise ValueError(f"warm_start: expected an integer >= 1, got {json_text(warm_start)}")
        for name, v in (
            ("warning_threshold", warning_threshold),
            ("drift_threshold", drift_threshold),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0):
                raise ValueError(f"{name}: expected a number > 0, got {json_text(v)}")
        if drift_threshold <= warning_threshold:
            raise ValueError(
                f"drift_threshold={drift_threshold} must exceed "
                f"warning_threshold={warning_threshold}"
            )
        self.warm_start = warm_start
        self.warning_threshold = float(warning_threshold)
        self.drift_threshold = float(drift_threshold)
        self.n_detections = 0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self._errors = 0
        self._ps_min = math.inf
        self._s_min = math.inf
        self.drift_detected = False
        self.warning_detected = False

    @property
    def error_rate(self) -> float:
        """Error rate since the last drift (NaN before the first update)."""
        return self._errors / self.n if self.n else math.nan

    def update(self, error: bool) -> None:
        """Add one labelled outcome: ``True`` (or 1) if the prediction was wrong."""
        if error not in (True, False):  # also admits 0/1, numpy bools
            raise ValueError(f"error: expected a boolean (or 0/1), got {json_text(error)}")
        if self.drift_detected:
            self._reset()
        self.n += 1
        self._errors += bool(error)
        self.warning_detected = False
        if self.n < self.warm_start:
            return
        p = self._errors / self.n
        s = math.sqrt(p * (1.0 - p) / self.n)
        ps = p + s
        if s > 0 and ps <= self._ps_min:
            self._ps_min = ps
            self._s_min = s
        if math.isinf(self._s_min):
            return
        # p_min + k * s_min == ps_min + (k - 1) * s_min
        if ps >= self._ps_min + (self.drift_threshold - 1.0) * self._s_min:
            self.drift_detected = True
            self.n_detections += 1
        elif ps >= self._ps_min + (self.warning_threshold - 1.0) * self._s_min:
            self.warning_detected = True


class HDDM_A:
    """Hoeffding Drift Detection Method, A-test, for increases of the error rate."""

    def __init__(self, drift_confidence: float = 0.001, warning_confidence: float = 0.005) -> None:
        for name, v in (
            ("drift_confidence", drift_confidence),
            ("warning_confidence", warning_confidence),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1):
                raise ValueError(f"{name}: expected a number in (0, 1), got {json_text(v)}")
        if warning_confidence <= drift_confidence:
            raise ValueError(
                f"warning_confidence={warning_confidence} must exceed "
                f"drift_confidence={drift_confidence} (a warning comes before a drift)"
            )
        self.drift_confidence = float(drift_confidence)
        self.warning_confidence = float(warning_confidence)
        self._cut_log = math.log(1.0 / self.drift_confidence)
        self._drift_log = math.log(2.0 / self.drift_confidence)
        self._warn_log = math.log(2.0 / self.warning_confidence)
        self.n_detections = 0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self._errors = 0
        self._cut_n = 0
        self._cut_errors = 0
        self._cut_bound = math.inf
        self.drift_detected = False
        self.warning_detected = False

    @property
    def error_rate(self) -> float:
        """Error rate since the last drift (NaN before the first update)."""
        return self._errors / self.n if self.n else math.nan

    def update(self, error: bool) -> None:
        """Add one labelled outcome: ``True`` (or 1) if the prediction was wrong."""
        if error not in (True, False):
            raise ValueError(f"error: expected a boolean (or 0/1), got {json_text(error)}")
        if self.drift_detected:
            self._reset()
        self.n += 1
        self._errors += bool(error)
        self.warning_detected = False
        mean = self._errors / self.n
        bound = mean + math.sqrt(self._cut_log / (2.0 * self.n))
        if bound <= self._cut_bound:
            self._cut_bound = bound
            self._cut_n = self.n
            self._cut_errors = self._errors
        if self._cut_n == self.n:
            return
        gap = mean - self._cut_errors / self._cut_n
        m = (self.n - self._cut_n) / (2.0 * self._cut_n * self.n)
        if gap >= math.sqrt(m * self._drift_log):
            self.drift_detected = True
            self.n_detections += 1
        elif gap >= math.sqrt(m * self._warn_log):
            self.warning_detected = True


class PageHinkley:
    """Page-Hinkley test (a CUSUM on deviations from the running mean), as River defines it.

    River's ``drift.PageHinkley`` (0.26), rule for rule, so its published examples are the
    reference: with ``m_t`` the running mean of everything seen since the last reset,

        S⁺_t = alpha · S⁺_{t-1} + (x_t − m_t) − delta,   drift up   when S⁺_t − min S⁺ > threshold
        S⁻_t = alpha · S⁻_{t-1} + (x_t − m_t) + delta,   drift down when max S⁻ − S⁻_t > threshold

    after ``min_instances`` values (``mode``: "up", "down" or "both"). As in River, the
    running maximum of S⁻ starts at −1, not −inf. After a drift the next update starts
    afresh. E. S. Page, Biometrika 41, 1954.

    For the error stream (``update(error)`` with True/1 for a wrong prediction), use
    ``mode="up"``. Unlike HDDM_A there is no false-alarm probability by construction; the
    trade-off between delay and false alarms is set by ``threshold`` and ``delta`` and was
    measured (docs/drift.md, section 6): it reacts to a small step much sooner than HDDM_A
    after a long stable history, whose cut point then needs thousands of new outcomes to
    move its Hoeffding bound.
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        if isinstance(min_instances, bool) or not isinstance(min_instances, int):
            raise ValueError(
                f"min_instances: expected an integer >= 1, got {json_text(min_instances)}"
            )
        if min_instances < 1:
            raise ValueError(
                f"min_instances: expected an integer >= 1, got {json_text(min_instances)}"
            )
        for name, v in (("delta", delta), ("threshold", threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0):
                raise ValueError(f"{name}: expected a number >= 0, got {json_text(v)}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ValueError(f"alpha: expected a number in (0, 1], got {json_text(alpha)}")
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode: expected 'up', 'down' or 'both', got {json_text(mode)}")
        self.min_instances = min_instances
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.mode = mode
        self.n_detections = 0
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self._mean = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -1.0
        self.drift_detected = False
        # No warning zone in Page-Hinkley; kept for the detectors' common interface.
        self.warning_detected = False

    @property
    def error_rate(self) -> float:
        """Mean of the values since the last drift (the error rate on an error stream)."""
        return self._mean if self.n else math.nan

    def update(self, x: float) -> None:
        """Add one value (an error flag, True/1 = wrong, or any finite number)."""
        numpy_bool = type(x).__name__ == "bool_"
        if not (numpy_bool or (isinstance(x, numbers.Real) and math.isfinite(float(x)))):
            raise ValueError(f"x: expected a finite number or a boolean, got {json_text(x)}")
        value = float(x)
        if self.drift_detected:
            self._reset()
        self.n += 1
        self._mean += (value - self._mean) / self.n
        dev = value - self._mean
        self._sum_increase = self.alpha * self._sum_increase + dev - self.delta
        self._sum_decrease = self.alpha * self._sum_decrease + dev + self.delta
        self._min_increase = min(self._min_increase, self._sum_increase)
        self._max_decrease = max(self._max_decrease, self._sum_decrease)
        if self.n >= self.min_instances:
            up = self._sum_increase - self._min_increase > self.threshold
            down = self._max_decrease - self._sum_decrease > self.threshold
            hit = {"up": up, "down": down, "both": up or down}[self.mode]
            if hit:
                self.drift_detected = True
                self.n_detections += 1
