"""Assemble the self-contained HTML document from the validated data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .markup import esc
from .model import ReportData
from .sections.drift import render_drift
from .sections.events import render_events
from .sections.experiment import render_experiments
from .sections.header import render_header
from .sections.rollout import render_devices, render_rollouts
from .style import stylesheet
from .timefmt import Clock
from .validate import parse_report

# Nothing may load from anywhere: no scripts, no fonts, no images from the network. The
# policy makes the browser enforce that even if user text ever slipped past escaping.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def render_document(data: ReportData) -> str:
    times = data.all_times()
    origin = min(times) if times else data.generated_at
    end = max([*times, origin])
    clock = Clock(origin, end)
    # A batch still running is drawn up to when the report was written.
    now = max(end, data.generated_at)
    body = (
        render_header(data, clock, end)
        + render_devices(data.devices, clock)
        + render_drift(
            data.drift,
            clock,
            data.empty_reason("drift", "drift monitoring was not part of this run"),
            data.empty_reason("drift_windows", "no drift windows completed"),
        )
        + render_experiments(
            data.experiments, clock, data.empty_reason("experiments", "no experiment ran")
        )
        + render_rollouts(
            data.rollouts, data.events, now, clock, data.empty_reason("rollouts", "no rollout ran")
        )
        + render_events(
            data.events, clock, data.empty_reason("events", "no control-node events were recorded")
        )
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="edgeloop report">'
        f"<title>{esc(data.title)}</title><style>{stylesheet()}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def render_report(data: Mapping[str, Any]) -> str:
    """One self-contained HTML document (inline CSS and SVG, no script, no network).

    ``data`` follows the contract in docs/report.md; a missing or malformed field raises
    :class:`~edgeloop_control.report.validate.ReportDataError` naming it.
    """
    return render_document(parse_report(data))
