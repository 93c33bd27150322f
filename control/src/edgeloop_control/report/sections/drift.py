"""Section 2: PSI per feature over time, small multiples, plus the PSI heat table."""

from __future__ import annotations

from collections.abc import Sequence

from ..markup import Html, LegendItem, empty, esc, legend, num, p_value, unique_slugs
from ..model import Drift, DriftWindow
from ..palette import ALARM, MARKER, THRESHOLD, heat, series_color
from ..scale import time_domain
from ..svg import Point, time_chart
from ..timefmt import Clock

# The heat table is a detail view; the charts already show every window.
HEAT_MAX_WINDOWS = 40
OUTPUT = "model output"


def _stream_name(stream: tuple[str, str]) -> str:
    return f"{stream[0]} · {stream[1]}"


def _streams(windows: Sequence[DriftWindow]) -> dict[tuple[str, str], list[DriftWindow]]:
    """Windows grouped per (device, variant) in first-seen order, each sorted by time."""
    groups: dict[tuple[str, str], list[DriftWindow]] = {}
    for w in windows:
        groups.setdefault(w.stream, []).append(w)
    return {k: sorted(v, key=lambda w: w.t) for k, v in groups.items()}


def _value(w: DriftWindow, feature: str | None) -> float | None:
    return w.output_psi if feature is None else w.psi.get(feature)


def _tooltip(w: DriftWindow, feature: str | None, clock: Clock) -> str:
    value = _value(w, feature)
    parts = [f"{_stream_name(w.stream)} at {clock.both(w.t)}: PSI {num(value)}"]
    if feature is not None and w.ks_p.get(feature) is not None:
        # KS for numeric features and the multivariate row, chi-square for categorical ones;
        # adjusted in the window's one family either way.
        parts.append(f"p (adj.) {p_value(w.ks_p[feature])}")
    if w.n is not None:
        parts.append(f"n={w.n:,}")
    if w.dataset_drift:
        parts.append("dataset drift flagged")
    return ", ".join(parts)


def _chart(
    chart_id: str,
    feature: str | None,
    drift: Drift,
    streams: dict[tuple[str, str], list[DriftWindow]],
    colors: dict[tuple[str, str], str],
    x_domain: tuple[float, float],
    clock: Clock,
) -> Html:
    name = OUTPUT if feature is None else feature
    thr = drift.psi_threshold
    values = [(w, _value(w, feature)) for ws in streams.values() for w in ws]
    present = [(w, v) for w, v in values if v is not None]
    top = max([v for _, v in present] + [thr * 1.3])
    above = sum(1 for _, v in present if v > thr)
    if present:
        worst_w, worst = max(present, key=lambda wv: wv[1])
        summary = (
            f"{above} of {len(present)} windows above the threshold {thr:g}; max PSI "
            f"{worst:.3f} ({_stream_name(worst_w.stream)} at {clock.rel(worst_w.t)})"
        )
    else:
        summary = dict(drift.feature_notes).get(name, "no PSI values for this feature")
    chart = time_chart(
        chart_id,
        f"PSI of {name} over time",
        x_domain=x_domain,
        y_domain=(0.0, top * 1.08),
        clock=clock,
        y_label="PSI",
        desc=summary,
    )
    for stream, ws in streams.items():
        chart.line([w.t for w in ws], [_value(w, feature) for w in ws], color=colors[stream])
    chart.hline(thr, color=THRESHOLD, label=f"threshold {thr:g}")
    if drift.shift_at is not None:
        chart.vline(drift.shift_at, color=MARKER, label="data shift")
    chart.points(
        [
            Point(
                w.t,
                v,
                colors[w.stream],
                _tooltip(w, feature, clock),
                radius=3.4 if w.dataset_drift else 2.0,
                ring=ALARM if w.dataset_drift else None,
            )
            for w, v in present
        ]
    )
    return Html(
        f'<figure class="small"><figcaption class="chart-title">{esc(name)}</figcaption>'
        f"{chart.render()}<figcaption>{esc(summary)}</figcaption></figure>"
    )


def _estimated_chart(
    drift: Drift,
    streams: dict[tuple[str, str], list[DriftWindow]],
    colors: dict[tuple[str, str], str],
    x_domain: tuple[float, float],
    clock: Clock,
) -> Html:
    """The agents' label-free accuracy estimate per window (calibrated classifiers only)."""
    present = [w for ws in streams.values() for w in ws if w.estimated is not None]
    values = [w.estimated for w in present if w.estimated is not None]
    refs = [w.estimated_reference for w in present if w.estimated_reference is not None]
    low = min([*values, *refs]) if values else 0.0
    worst = min(present, key=lambda w: w.estimated or 0.0)
    summary = (
        f"{len(present)} windows with an estimate; lowest {worst.estimated:.3f} "
        f"({_stream_name(worst.stream)} at {clock.rel(worst.t)})"
        + (f"; training holdout {refs[-1]:.3f}" if refs else "")
    )
    chart = time_chart(
        "drift-estimated-chart",
        "Estimated accuracy without labels",
        x_domain=x_domain,
        y_domain=(max(0.0, low - 0.05), 1.0),
        clock=clock,
        y_label="accuracy",
        desc=summary,
    )
    for stream, ws in streams.items():
        chart.line([w.t for w in ws], [w.estimated for w in ws], color=colors[stream])
    if refs:
        chart.hline(refs[-1], color=THRESHOLD, label=f"training {refs[-1]:.3f}")
    if drift.shift_at is not None:
        chart.vline(drift.shift_at, color=MARKER, label="data shift")
    chart.points(
        [
            Point(w.t, w.estimated, colors[w.stream],
                  f"{_stream_name(w.stream)} at {clock.both(w.t)}: estimated accuracy "
                  f"{num(w.estimated)}" + (f", n={w.n:,}" if w.n is not None else ""))
            for w in present
            if w.estimated is not None
        ]
    )  # fmt: skip
    return Html(
        '<figure class="small"><figcaption class="chart-title">estimated accuracy (no labels)'
        f"</figcaption>{chart.render()}<figcaption>{esc(summary)}</figcaption></figure>"
    )


def _heat_table(
    stream: tuple[str, str], windows: list[DriftWindow], drift: Drift, clock: Clock
) -> Html:
    shown = windows[-HEAT_MAX_WINDOWS:]
    note = f" (last {len(shown)} of {len(windows)} windows)" if len(shown) < len(windows) else ""
    head = "".join(
        f'<th class="{"flag" if w.dataset_drift else ""}" title="{esc(_tooltip(w, None, clock))}">'
        f"{esc(clock.rel(w.t))}{' ⚑' if w.dataset_drift else ''}</th>"
        for w in shown
    )
    rows = []
    has_output = any(w.output_psi is not None for w in shown)
    for feature in [*drift.features, *([None] if has_output else [])]:
        cells = []
        for w in shown:
            value = _value(w, feature)
            if value is None:
                cells.append('<td class="na">–</td>')
                continue
            bg, fg = heat(value, drift.psi_threshold)
            tip = esc(_tooltip(w, feature, clock))
            cells.append(f'<td style="background:{bg};color:{fg}" title="{tip}">{value:.2f}</td>')
        label = OUTPUT if feature is None else feature
        rows.append(f'<tr><th scope="row">{esc(label)}</th>{"".join(cells)}</tr>')
    return Html(
        f'<div class="heat-wrap"><table class="heat"><caption>{esc(_stream_name(stream))}'
        f"{esc(note)}</caption><thead><tr><th>feature \\ window end</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _heat_legend(threshold: float) -> Html:
    stops = (0.0, 0.5, 1.0, 2.0, 4.0)
    cells = "".join(
        f'<span style="background:{heat(threshold * s, threshold)[0]};'
        f'color:{heat(threshold * s, threshold)[1]}">{threshold * s:.2g}</span>'
        for s in stops
    )
    return Html(f'<p class="heat-legend">PSI colour scale: {cells}</p>')


def render_drift(
    drift: Drift | None,
    clock: Clock,
    why_none: str = "drift monitoring was not part of this run",
    why_empty: str = "no drift windows completed",
) -> Html:
    head = '<section id="drift"><h2>Drift per feature over time</h2>'
    if drift is None:
        return Html(head + empty(why_none) + "</section>")
    alpha = f", KS tests at α = {drift.alpha:g}" if drift.alpha is not None else ""
    intro = (
        f'<p class="lead">Population stability index (PSI) of each feature in each completed '
        f"window, per device and model variant. Dashed red line: the PSI threshold "
        f"{drift.psi_threshold:g}{esc(alpha)}. Ringed points: windows where the agent flagged "
        f"dataset drift.</p>"
    )
    if not drift.windows:
        return Html(head + intro + empty(why_empty) + "</section>")
    streams = _streams(drift.windows)
    colors = {s: series_color(i) for i, s in enumerate(streams)}
    x_domain = time_domain([*(w.t for w in drift.windows), drift.shift_at])
    items = [LegendItem(_stream_name(s), c) for s, c in colors.items()]
    items += [
        LegendItem("dataset drift flagged", ALARM, "ring"),
        LegendItem("PSI threshold", THRESHOLD, "dash"),
    ]
    if drift.shift_at is not None:
        items.append(LegendItem("data shift", MARKER, "dash"))
    figures = [
        _chart(f"drift-chart-{s}", feature, drift, streams, colors, x_domain, clock)
        for feature, s in zip(drift.features, unique_slugs(drift.features), strict=True)
    ]
    if any(w.output_psi is not None for w in drift.windows):
        figures.append(_chart("drift-output-chart", None, drift, streams, colors, x_domain, clock))
    if any(w.estimated is not None for w in drift.windows):
        figures.append(_estimated_chart(drift, streams, colors, x_domain, clock))
    flagged = sum(w.dataset_drift for w in drift.windows)
    facts = (
        f'<p class="facts">{len(drift.windows)} windows from {len(streams)} device/variant '
        f"streams; {flagged} flagged dataset drift"
        + (
            f"; data shift at {esc(clock.both(drift.shift_at))}"
            if drift.shift_at is not None
            else ""
        )
        + ".</p>"
    )
    heat_tables = "".join(_heat_table(s, ws, drift, clock) for s, ws in streams.items())
    return Html(
        head
        + intro
        + facts
        + legend(items)
        + f'<div class="grid">{"".join(figures)}</div>'
        + "<h3>PSI per window</h3>"
        + _heat_legend(drift.psi_threshold)
        + heat_tables
        + "</section>"
    )
