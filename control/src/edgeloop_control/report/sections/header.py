"""Section 1: title, when and where, the run at a glance, the summary and the narrated steps."""

from __future__ import annotations

from ..markup import Html, badge, empty, esc, free_value, table
from ..model import ReportData
from ..palette import tone
from ..timefmt import Clock, duration, elapsed, utc_datetime

NAV = (
    ("devices", "Fleet"),
    ("drift", "Drift"),
    ("experiment", "A/B experiments"),
    ("rollout", "Rollouts"),
    ("events", "Events"),
)


def _glance(data: ReportData) -> Html:
    """One line per part of the loop, so the outcome is readable without the charts."""
    items: list[str] = []
    drift = data.drift
    if drift is not None and drift.windows:
        flagged = sum(w.dataset_drift for w in drift.windows)
        items.append(f"<li>Drift: {flagged} of {len(drift.windows)} windows flagged</li>")
    for exp in data.experiments:
        action = (
            badge(exp.decision.action, tone(exp.decision.action))
            if exp.decision is not None
            else "no decision yet"
        )
        items.append(f"<li>A/B: {esc(exp.challenger)} vs {esc(exp.champion)} → {action}</li>")
    for r in data.rollouts:
        items.append(f"<li>Rollout of {esc(r.model)}: {badge(r.state, tone(r.state))}</li>")
    if data.devices:
        online = sum(1 for d in data.devices if d.online)
        items.append(f"<li>Devices: {online} of {len(data.devices)} online</li>")
    if not items:
        return Html("")
    return Html(f'<ul class="glance">{"".join(items)}</ul>')


def _steps(data: ReportData, clock: Clock) -> Html:
    head = '<h3 id="steps">Narrated steps</h3>'
    if not data.timeline:
        return Html(head + empty("no steps were recorded"))
    rows = [
        [i + 1, clock.rel(s.t), duration(s.duration_s), s.step, s.detail]
        for i, s in enumerate(sorted(data.timeline, key=lambda s: s.t))
    ]
    return Html(
        head
        + table(["#", "start", "took", "step", "detail"], rows, numeric=(0, 2), cls="data steps")
    )


def render_header(data: ReportData, clock: Clock, end: float) -> Html:
    where = f" · workspace <code>{esc(data.workspace)}</code>" if data.workspace else ""
    span = (
        f" · run from {esc(utc_datetime(clock.origin))}, {esc(elapsed(end - clock.origin))} long"
        if end > clock.origin
        else ""
    )
    nav = "".join(f'<a href="#{key}">{esc(label)}</a>' for key, label in NAV)
    summary = (
        table(
            ["figure", "value"], [[k, free_value(v)] for k, v in data.summary], cls="data summary"
        )
        if data.summary
        else empty("no summary figures")
    )
    return Html(
        f"<header><h1>{esc(data.title)}</h1>"
        f'<p class="meta">Generated {esc(utc_datetime(data.generated_at))}{where}{span}</p>'
        f'<nav class="toc">{nav}</nav></header>'
        f'<section id="summary"><h2>Summary</h2>{_glance(data)}{summary}{_steps(data, clock)}'
        "</section>"
    )
