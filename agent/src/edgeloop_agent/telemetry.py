"""What the agent learns while serving, and what it tells the control node.

Implements the serving hooks: per-variant counters and latency, streaming drift
per variant (serving and shadow), the feedback join with outcome aggregates and
a concept-drift detector per variant, sampled data capture, and the periodic
report. Everything bound for the control node goes through the durable outbox.

Threads: hooks run on the serving thread; ``report()`` runs on the
housekeeping thread. Shared state is either thread-safe (Metrics, joiner,
outbox) or handed over through deques.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop_agent import __version__
from edgeloop_agent.deployment import Deployment
from edgeloop_agent.drift import HDDM_A, DriftConfig, DriftMonitor
from edgeloop_agent.drift.performance import PerformanceEstimate, PerformanceEstimator
from edgeloop_agent.feedback import FeedbackJoiner
from edgeloop_agent.metrics import Metrics
from edgeloop_agent.model import OnnxModel, Outputs
from edgeloop_agent.outbox import Outbox
from edgeloop_agent.procstats import ProcessStats
from edgeloop_agent.protocol import Code
from edgeloop_agent.serving import ServingHooks
from edgeloop_agent.wire.calibration import Calibration
from edgeloop_agent.wire.keysketch import key_hashes
from edgeloop_agent.wire.profile import ReferenceProfile
from edgeloop_agent.wire.topics import Topics

log = logging.getLogger("edgeloop.agent.telemetry")

UNROUTED = "__unrouted__"  # errors that happen before a variant is chosen
MAX_PENDING_WINDOWS = 256  # drift windows kept between two reports


@dataclass
class _VariantState:
    model: OnnxModel
    role: str
    monitor: DriftMonitor | None
    concept: HDDM_A
    numeric_index: list[int] | None  # profile order -> model numeric columns; None: same
    profile_error: str | None = None
    # Profile's categorical features -> (string graph input, column) in the feeds.
    categorical_plan: list[tuple[str, int]] = field(default_factory=list)
    # Wall clock of the last completed window: count windows are numbered in
    # rows, and the control node needs to know *when* drift began.
    last_window_at: float = field(default_factory=time.time)
    # Label-free performance estimate on the drift monitor's windows (calibrated classifiers).
    estimator: PerformanceEstimator | None = None


class Telemetry(ServingHooks):
    def __init__(
        self,
        *,
        topics: Topics,
        outbox: Outbox,
        drift_config: DriftConfig,
        capture_rate: float,
        feedback_window: int,
        feedback_max_age_s: float,
        seed: int | None = None,
    ) -> None:
        self.topics = topics
        self.device = topics.device
        self.outbox = outbox
        self.drift_config = drift_config
        self.capture_rate = capture_rate
        self.feedback_window = feedback_window
        self.feedback_max_age_s = feedback_max_age_s
        self.metrics = Metrics()
        self.proc = ProcessStats()
        # Set by the agent: the intake's state (bound, high-water mark, pauses).
        self.intake_stats: Callable[[], dict[str, int]] | None = None
        self._rng = random.Random(seed)
        self._variants: dict[str, _VariantState] = {}
        self._joiner: FeedbackJoiner | None = None
        self._windows: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_WINDOWS)
        self._windows_dropped = 0
        self._boot = os.urandom(4).hex()
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._deployment: Deployment | None = None
        self._last_report = time.time()
        self.captured = 0
        self.capture_failures = 0
        # Set by the agent when Prometheus output is on; sees every report.
        self.exporter: Any = None
        self.labels_sent = 0
        self.label_failures = 0  # labels the outbox refused (full or read-only disk, ...)

    # -- deployment ------------------------------------------------------------

    def on_deployed(self, deployment: Deployment) -> None:
        """Keep monitors of unchanged variants; build fresh ones for new models."""
        new: dict[str, _VariantState] = {}
        for role, models in (("serve", deployment.models), ("shadow", deployment.shadows)):
            for variant, model in models.items():
                old = self._variants.get(variant)
                if old is not None and old.model.sha256 == model.sha256:
                    old.model, old.role = model, role
                    new[variant] = old
                else:
                    new[variant] = self._variant_state(variant, model, role)
        tasks = {m.meta.task for m in deployment.models.values()}
        task = tasks.pop() if len(tasks) == 1 else None
        if task is not None and (self._joiner is None or self._joiner.task != task):
            self._joiner = FeedbackJoiner(
                task=task, max_entries=self.feedback_window, max_age_s=self.feedback_max_age_s
            )
        self._variants = new  # one reference swap, read by the serving thread
        self._deployment = deployment

    def _variant_state(self, variant: str, model: OnnxModel, role: str) -> _VariantState:
        monitor, index, error = None, None, None
        plan: list[tuple[str, int]] = []
        if model.meta.profile is None:
            error = "the model carries no reference profile"
        else:
            try:
                profile = ReferenceProfile.from_dict(model.meta.profile)
                numeric = model.meta.numeric_feature_names
                missing = [f for f in profile.feature_names if f not in numeric]
                if missing:
                    raise ValueError(
                        f"profile features {missing} are not numeric inputs of {model.ref}"
                    )
                index = [numeric.index(f) for f in profile.feature_names]
                if index == list(range(len(numeric))):
                    index = None  # the usual case: no column gather per batch
                plan = categorical_plan(model, [c.name for c in profile.categorical])
                monitor = DriftMonitor(profile, self.drift_config)
            except ValueError as exc:
                error = f"reference profile does not match {model.ref}: {exc}"
        if error:
            log.error("drift monitoring off for %s: %s", variant, error)
        state = _VariantState(model, role, monitor, HDDM_A(), index, error, plan)
        if monitor is not None and model.is_classifier and model.meta.calibration is not None:
            try:
                cal = Calibration.from_dict(model.meta.calibration, len(model.classes))
                state.estimator = PerformanceEstimator(cal, self.drift_config.window)
            except ValueError as exc:  # a bad map costs the estimate, never the model
                log.error("performance estimate off for %s: %s", variant, exc)
        return state

    # -- serving hooks (serving thread) ------------------------------------------

    def on_request(self, variant: str | None, latency_s: float, n_rows: int) -> None:
        self.metrics.record_request(variant or UNROUTED, latency_s, predictions=n_rows)

    def on_error(self, variant: str | None, code: str) -> None:
        self.metrics.record_request(variant or UNROUTED, None, error=code, predictions=0)

    def on_routed(self, variant: str, keys: list[str | None], experiment_id: str) -> None:
        keyed = [k for k in keys if k is not None]
        self.metrics.record_assigned(
            variant, key_hashes(experiment_id, keyed), len(keys) - len(keyed)
        )

    def on_predictions(
        self,
        variant: str,
        model: OnnxModel,
        request_ids: list[str],
        rows: list[list[Any]],
        feeds: dict[str, Any],
        outputs: Any,
        starts: list[int],
        *,
        shadow: bool = False,
    ) -> None:
        now = time.time()
        if shadow:  # a shadow's requests are not counted by on_request: it never answers
            self.metrics.record_request(variant, None, predictions=len(rows))
        self._monitor(variant, self._variants.get(variant), model, feeds, outputs, now)
        joiner = self._joiner
        capture = 0.0 if shadow else self.capture_rate
        if joiner is None and not capture:
            return
        predictions = model.predictions(outputs)  # one conversion per batch, not per row
        ends = [*starts[1:], len(rows)]
        for rid, start, end in zip(request_ids, starts, ends, strict=True):
            if end - start != 1:
                continue  # feedback joins single-row requests only (docs/telemetry.md)
            prediction = predictions[start]
            if shadow:
                # Shadow predictions join the same labels under a derived id, so the
                # shadow's accuracy is measured on exactly the traffic the server saw.
                assert joiner is not None
                joiner.record(shadow_id(rid, variant), variant, prediction, now)
                continue
            sample_id = None
            if capture and self._rng.random() < capture:
                sample_id = self._capture(variant, model, rid, rows[start], prediction, now)
            if joiner is not None:
                joiner.record(rid, variant, prediction, now, extra=sample_id)

    def on_feedback(self, request_id: str, label: Any) -> str | None:
        joiner = self._joiner
        if joiner is None:
            return Code.UNKNOWN_REQUEST
        now = time.time()
        result = joiner.join(request_id, label, now)
        if result.status != "matched":
            return {
                "unknown": Code.UNKNOWN_REQUEST,
                "late": Code.UNKNOWN_REQUEST,
                "duplicate": Code.DUPLICATE_FEEDBACK,
            }.get(result.status, Code.INVALID_LABEL)
        for shadow in self._shadow_variants():
            shadow_result = joiner.join(shadow_id(request_id, shadow), label, now)
            if shadow_result.status == "matched":
                self._outcome(shadow, shadow_result)
        variant = result.variant or UNROUTED
        self._outcome(variant, result)
        if result.extra is not None:
            stored = self.outbox.put(
                self.topics.labels,
                {
                    "sample_id": result.extra,
                    "request_id": request_id,
                    "device": self.device,
                    "ts": now,
                    "label": label,
                    "variant": variant,
                },
                "label",
            )
            if stored is None:
                self.label_failures += 1
            else:
                self.labels_sent += 1
        return None

    # -- helpers -------------------------------------------------------------------

    def _shadow_variants(self) -> list[str]:
        return [v for v, st in self._variants.items() if st.role == "shadow"]

    def _outcome(self, variant: str, result: Any) -> None:
        if result.correct is not None:
            self.metrics.record_classification(variant, result.correct)
            wrong: bool | None = not result.correct
        else:
            error = result.error if result.error is not None else float("nan")
            self.metrics.record_regression(variant, error)
            wrong = None
        state = self._variants.get(variant)
        if state is not None and wrong is not None:
            state.concept.update(wrong)
            if state.concept.drift_detected:
                log.warning(
                    "concept drift on %s: error rate %.3f", variant, state.concept.error_rate
                )

    def _monitor(
        self,
        variant: str,
        state: _VariantState | None,
        model: OnnxModel,
        feeds: dict[str, Any],
        outputs: Outputs,
        now: float,
    ) -> None:
        if state is None or state.monitor is None or not feeds:
            return
        X = model.numeric_matrix(feeds)
        if X is None:
            return
        if state.numeric_index is not None:
            X = X[:, state.numeric_index]
        cats = None
        if state.categorical_plan:
            cats = np.column_stack([feeds[name][:, j] for name, j in state.categorical_plan])
        try:
            reports = state.monitor.update(X, model.score(outputs), now=now, categories=cats)
        except ValueError as exc:  # a shape bug must not stop serving
            log.error("drift update failed for %s: %s", variant, exc)
            return
        estimates = self._estimates(variant, state, outputs, now)
        for report in reports:
            if len(self._windows) == self._windows.maxlen:
                self._windows_dropped += 1
            doc = report.to_dict()
            doc["variant"] = variant
            doc["version"] = model.version
            doc["t_start"] = state.last_window_at
            doc["t_end"] = now
            estimate = estimates.get((report.start, report.end))
            if estimate is not None:
                doc["estimated"] = estimate.to_dict()
            state.last_window_at = now
            self._windows.append(doc)
            if report.dataset_drift:
                drifting = report.drifted_features  # numeric and categorical
                if report.multivariate is not None and report.multivariate.drift:
                    drifting.append("multivariate (PCA reconstruction)")
                log.warning("data drift on %s: %s", variant, ", ".join(drifting))

    def _estimates(
        self, variant: str, state: _VariantState, outputs: Outputs, now: float
    ) -> dict[tuple[float, float], PerformanceEstimate]:
        """This batch's completed estimate windows, by (start, end) of the drift window."""
        estimator = state.estimator
        if estimator is None or outputs.probabilities is None:
            return {}
        try:
            done = estimator.update(outputs.probabilities, now)
        except ValueError as exc:  # off for good: its windows would no longer line up
            log.error("performance estimate failed for %s, now off: %s", variant, exc)
            state.estimator = None
            return {}
        return {(e.start, e.end): e for e in done}

    def _next_id(self) -> str:
        with self._seq_lock:
            self._seq += 1
            return f"{self.device}:{self._boot}:{self._seq}"

    def _capture(
        self, variant: str, model: OnnxModel, rid: str, row: list[Any], prediction: Any, now: float
    ) -> str | None:
        sample_id = self._next_id()
        features = {}
        for name, value in zip(model.feature_names, row, strict=True):
            features[name] = None if isinstance(value, float) and value != value else value
        record = {
            "sample_id": sample_id,
            "device": self.device,
            "ts": now,
            "request_id": rid,
            "model": model.name,
            "version": model.version,
            "variant": variant,
            "features": features,
            "prediction": prediction,
            "label": None,
        }
        if self.outbox.put(self.topics.samples, record, "sample") is None:
            self.capture_failures += 1
            return None
        self.captured += 1
        return sample_id

    # -- periodic report (housekeeping thread) ------------------------------------

    def dropped(self) -> dict[str, int]:
        """Items lost on the way to the control node since start, by kind: telemetry reports,
        captured samples, labels and events the outbox refused or evicted (full or read-only
        disk, capacity), and drift windows that overflowed between two reports."""
        by_kind = self.outbox.dropped()
        return {
            "telemetry": by_kind.get("report", 0),
            "samples": by_kind.get("sample", 0),
            "labels": by_kind.get("label", 0),
            "events": by_kind.get("event", 0),
            "drift_windows": self._windows_dropped,
        }

    def report(self, *, status: dict[str, Any] | None = None) -> str | None:
        now = time.time()
        windows = []
        while self._windows:
            try:
                windows.append(self._windows.popleft())
            except IndexError:
                break
        proc = self.proc.sample()
        deployment = self._deployment
        concept = {
            variant: {
                "n": st.concept.n,
                "error_rate": st.concept.error_rate,
                "warning": st.concept.warning_detected,
                "drift": st.concept.drift_detected,
                "detections": st.concept.n_detections,
            }
            for variant, st in self._variants.items()
        }
        doc = {
            "report_id": self._next_id(),
            "device": self.device,
            "ts": now,
            "interval_s": now - self._last_report,
            "agent_version": __version__,
            "revision": deployment.revision if deployment else None,
            "experiment": deployment.desired.experiment if deployment else None,
            "variants": {
                v: {
                    "name": st.model.name,
                    "version": st.model.version,
                    "role": st.role,
                    "sha256": st.model.sha256,
                    "drift_monitoring": st.profile_error or "on",
                }
                for v, st in self._variants.items()
            },
            "metrics": self.metrics.snapshot(reset=True),
            "drift": windows,
            "drift_windows_dropped": self._windows_dropped,
            "concept_drift": concept,
            "feedback": self._joiner.stats() if self._joiner is not None else {},
            "capture": {
                "rate": self.capture_rate,
                "captured": self.captured,
                "failures": self.capture_failures,
            },
            "labels": {"sent": self.labels_sent, "failures": self.label_failures},
            "dropped": self.dropped(),
            "outbox": self.outbox.stats(),
            "intake": self.intake_stats() if self.intake_stats is not None else {},
            "process": {
                "rss_bytes": proc.rss_bytes,
                "peak_rss_bytes": proc.peak_rss_bytes,
                "cpu_percent": proc.cpu_percent,
                "cpu_seconds": proc.cpu_s,
            },
        }
        if status:
            doc["status"] = status
        self._last_report = now
        doc = json_safe(doc)
        if self.exporter is not None:
            self.exporter.close_interval(doc)
        return self.outbox.put(self.topics.telemetry, doc, "report")


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (an undefined rate, an empty window) with null: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def categorical_plan(model: OnnxModel, names: list[str]) -> list[tuple[str, int]]:
    """Where each profiled categorical feature sits in the feeds: (string input, column)."""
    where = {
        f: (inp.name, j)
        for inp in model.meta.inputs
        if inp.dtype == "string"
        for j, f in enumerate(inp.features)
    }
    missing = [n for n in names if n not in where]
    if missing:
        raise ValueError(
            f"profile categorical features {missing} are not string inputs of {model.ref}"
        )
    return [where[n] for n in names]


def shadow_id(request_id: str, variant: str) -> str:
    return f"{request_id}\x00{variant}"
