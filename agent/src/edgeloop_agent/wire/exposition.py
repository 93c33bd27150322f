"""Writing the Prometheus text exposition format (0.0.4), as agent and control node do.

The agent's ``/metrics`` and textfile (``edgeloop_agent.prometheus``) and the control
node's fleet metrics (``edgeloop_control.web.fleetmetrics``) render the same
:class:`~edgeloop_agent.wire.histogram.LatencyHistogram` the same way, so a fleet
histogram is the sum of the devices' ones bucket for bucket: one writer, not two.
Histograms use Prometheus' cumulative ``le`` buckets at a fixed subset of the
histogram's own log-spaced edges (so no sample is split between two buckets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from edgeloop_agent.wire.histogram import LatencyHistogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Wanted upper bounds (s); each is moved to the nearest edge of the agent's histogram.
_WANTED_LE = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5)


class TextWriter:
    """Lines of the text format under one metric-name prefix (shared with the control node)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, text: str) -> None:
        self.lines.append(f"# HELP {self.prefix}_{name} {text}")
        self.lines.append(f"# TYPE {self.prefix}_{name} {kind}")

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        text = repr(float(value)) if isinstance(value, float) else str(int(value))
        full = f"{self.prefix}_{name}"
        self.lines.append(f"{full}{{{inner}}} {text}" if inner else f"{full} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _le_indexes(h: LatencyHistogram) -> list[int]:
    """Bucket indexes whose upper edges serve as ``le`` bounds (edge i = lo * g**i)."""
    picked = []
    for wanted in _WANTED_LE:
        if not h.lo <= wanted <= h.hi:
            continue
        i = round(math.log10(wanted / h.lo) * h.per_decade)
        if i not in picked:
            picked.append(i)
    return picked


def write_histogram(
    out: TextWriter, name: str, labels: dict[str, str], h: LatencyHistogram
) -> None:
    counts = h.to_dict()["counts"]
    dense = [0] * (h.n_log + 2)
    for i, c in counts:
        dense[i] = c
    running = 0
    upto = -1
    for i in _le_indexes(h):
        running += sum(dense[upto + 1 : i + 1])  # buckets 0..i hold samples below edge i
        upto = i
        edge = h.lo * 10 ** (i / h.per_decade)
        out.sample(f"{name}_bucket", {**labels, "le": f"{edge:.6g}"}, running)
    out.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, h.count)
    out.sample(f"{name}_sum", labels, h.sum)
    out.sample(f"{name}_count", labels, h.count)
