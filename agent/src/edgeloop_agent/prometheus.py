"""The agent's counters in the Prometheus text format (exposition format 0.0.4).

Two ways out, both opt-in, whichever the site's monitoring prefers:

* ``--metrics 127.0.0.1:9108``: a tiny HTTP endpoint (standard library) serving
  ``GET /metrics`` live: counters of closed telemetry intervals plus the one in
  progress;
* ``--metrics-textfile DIR``: ``DIR/edgeloop_agent.prom`` rewritten atomically
  at every telemetry interval, for node_exporter's textfile collector (no port
  opened by the agent at all).

The values come from the same telemetry reports the control node receives, so
Prometheus and ``edgeloop fleet`` never disagree. Labels are bounded: variants
and error codes are capped by :class:`~edgeloop_agent.metrics.Metrics`, features
by the model. Histograms use Prometheus' cumulative ``le`` buckets at a fixed
subset of the agent's own log-spaced bucket edges (so no sample is split
between two buckets).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeloop_agent.metrics import VariantMetrics
from edgeloop_agent.wire.exposition import CONTENT_TYPE, TextWriter, write_histogram
from edgeloop_agent.wire.numeric import is_number

log = logging.getLogger("edgeloop.agent.prometheus")

PREFIX = "edgeloop_agent"
TEXTFILE_NAME = "edgeloop_agent.prom"


class PrometheusExporter:
    """Cumulative counters built from telemetry reports; renders the text format."""

    def __init__(self, device: str, agent_version: str) -> None:
        self.device = device
        self.agent_version = agent_version
        self._lock = threading.Lock()
        self._totals: dict[str, VariantMetrics] = {}
        self._last: dict[str, Any] = {}
        self._windows: dict[str, list[int]] = {}  # variant -> [windows, flagged]

    def close_interval(self, report: Mapping[str, Any]) -> None:
        """Fold one telemetry report (its closed metrics interval) into the totals."""
        with self._lock:
            for variant, data in (report.get("metrics") or {}).get("variants", {}).items():
                try:
                    closed = VariantMetrics.from_dict(data)
                except ValueError as exc:  # our own report: a bug, not a reason to stop
                    log.error("prometheus: skipping variant %s: %s", variant, exc)
                    continue
                self._totals.setdefault(variant, VariantMetrics()).merge(closed)
            for window in report.get("drift") or []:
                counts = self._windows.setdefault(str(window.get("variant")), [0, 0])
                counts[0] += 1
                counts[1] += bool(window.get("dataset_drift"))
            self._last = dict(report)

    def render(self, live: Mapping[str, Any] | None = None) -> str:
        """The text format; ``live`` is the open interval's metrics snapshot, if any."""
        with self._lock:
            totals = {v: _copy(m) for v, m in self._totals.items()}
            last = self._last
            windows = {v: list(c) for v, c in self._windows.items()}
        for variant, data in ((live or {}).get("variants") or {}).items():
            with contextlib.suppress(ValueError):
                totals.setdefault(variant, VariantMetrics()).merge(VariantMetrics.from_dict(data))
        out = TextWriter(PREFIX)
        out.metric("info", "gauge", "The agent: 1, labelled with its device and version.")
        out.sample("info", {"device": self.device, "version": self.agent_version}, 1)
        self._serving(out, totals)
        self._models(out, last, windows)
        self._process(out, last)
        return out.text()

    def _serving(self, out: TextWriter, totals: Mapping[str, VariantMetrics]) -> None:
        out.metric("requests_total", "counter", "Requests answered, per variant.")
        for v, m in totals.items():
            out.sample("requests_total", {"variant": v}, m.requests)
        out.metric("predictions_total", "counter", "Rows predicted, per variant.")
        for v, m in totals.items():
            out.sample("predictions_total", {"variant": v}, m.predictions)
        out.metric("errors_total", "counter", "Requests refused, per variant and error code.")
        for v, m in totals.items():
            for code, n in sorted(m.errors.items()):
                out.sample("errors_total", {"variant": v, "code": code}, n)
        out.metric(
            "request_duration_seconds", "histogram", "Time from arrival to reply, per variant."
        )
        for v, m in totals.items():
            write_histogram(out, "request_duration_seconds", {"variant": v}, m.latency)
        out.metric("outcomes_total", "counter", "Labelled classification outcomes, per variant.")
        for v, m in totals.items():
            if m.cls_n:
                out.sample("outcomes_total", {"variant": v, "result": "correct"}, m.cls_correct)
                out.sample(
                    "outcomes_total", {"variant": v, "result": "wrong"}, m.cls_n - m.cls_correct
                )
        out.metric(
            "regression_abs_error", "summary", "Absolute error of labelled regression outcomes."
        )
        for v, m in totals.items():
            if m.reg_n:
                out.sample("regression_abs_error_sum", {"variant": v}, m.reg_sum_abs)
                out.sample("regression_abs_error_count", {"variant": v}, m.reg_n)

    def _models(
        self, out: TextWriter, last: Mapping[str, Any], windows: Mapping[str, list[int]]
    ) -> None:
        out.metric("model_info", "gauge", "Models loaded: 1 per variant, with name/version/role.")
        for v, info in (last.get("variants") or {}).items():
            labels = {
                "variant": v,
                "name": str(info.get("name")),
                "version": str(info.get("version")),
                "role": str(info.get("role")),
            }
            out.sample("model_info", labels, 1)
        out.metric("desired_revision", "gauge", "Revision of the desired state being served.")
        if isinstance(last.get("revision"), int):
            out.sample("desired_revision", {}, last["revision"])
        out.metric("drift_windows_total", "counter", "Completed drift windows, per variant.")
        out.metric("drift_flagged_windows_total", "counter", "Windows flagged as dataset drift.")
        for v, (n, flagged) in windows.items():
            out.sample("drift_windows_total", {"variant": v}, n)
            out.sample("drift_flagged_windows_total", {"variant": v}, flagged)
        newest: dict[str, Mapping[str, Any]] = {}
        for window in last.get("drift") or []:
            newest[str(window.get("variant"))] = window
        out.metric("drift_dataset", "gauge", "1 if the newest window was flagged as drifting.")
        out.metric("feature_psi", "gauge", "PSI of each feature in the newest drift window.")
        for v, window in newest.items():
            out.sample("drift_dataset", {"variant": v}, int(bool(window.get("dataset_drift"))))
            for f in window.get("features") or []:
                if isinstance(f, Mapping) and is_number(f.get("psi")):
                    out.sample(
                        "feature_psi", {"variant": v, "feature": str(f.get("name"))}, f["psi"]
                    )
        out.metric(
            "concept_drift_detections_total", "counter", "Concept-drift detections, per variant."
        )
        for v, c in (last.get("concept_drift") or {}).items():
            if isinstance(c, Mapping) and is_number(c.get("detections")):
                out.sample("concept_drift_detections_total", {"variant": v}, c["detections"])

    def _process(self, out: TextWriter, last: Mapping[str, Any]) -> None:
        proc = last.get("process") or {}
        outbox = last.get("outbox") or {}
        gauges = (
            ("resident_memory_bytes", "gauge", "Resident set size.", proc.get("rss_bytes")),
            ("cpu_seconds_total", "counter", "CPU time used.", proc.get("cpu_seconds")),
            ("outbox_depth", "gauge", "Messages waiting in the outbox.", outbox.get("depth")),
            ("outbox_bytes", "gauge", "Bytes waiting in the outbox.", outbox.get("bytes_used")),
            (
                "last_report_timestamp_seconds",
                "gauge",
                "When the last telemetry report was made (unix time).",
                last.get("ts"),
            ),
        )
        for name, kind, text, value in gauges:
            out.metric(name, kind, text)
            if is_number(value):
                out.sample(name, {}, value)
        # The outbox's own counters (sent, dropped, disk errors...): numbers only.
        out.metric("outbox_events_total", "counter", "Outbox counters since the agent started.")
        for key, value in sorted(outbox.items()):
            if key in ("depth", "bytes_used", "max_bytes", "inflight", "ack_backlog"):
                continue
            if is_number(value):
                out.sample("outbox_events_total", {"event": key}, value)
            elif isinstance(value, Mapping):
                for kind, n in sorted(value.items()):
                    if is_number(n):
                        out.sample("outbox_events_total", {"event": key, "kind": str(kind)}, n)


def _copy(m: VariantMetrics) -> VariantMetrics:
    c = VariantMetrics()
    c.merge(m)
    return c


# -- outputs --------------------------------------------------------------------------


def write_textfile(directory: Path, text: str) -> Path:
    """Atomically replace ``DIR/edgeloop_agent.prom`` (node_exporter never reads half)."""
    directory = Path(directory)
    target = directory / TEXTFILE_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{TEXTFILE_NAME}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # node_exporter runs as its own user; the agent's UMask=0077 would hide it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


class MetricsServer:
    """``GET /metrics`` on a local address, from a daemon thread (standard library)."""

    def __init__(self, host: str, port: int, render: Callable[[], str]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                try:
                    body = render().encode("utf-8")
                except Exception:  # a rendering bug must not kill the thread
                    log.exception("prometheus: rendering failed")
                    self.send_error(500, "rendering the metrics failed; see the agent's log")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would flood the journal

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.address = self.server.server_address
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
