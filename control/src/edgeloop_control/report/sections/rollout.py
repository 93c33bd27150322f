"""Section 4: the staged rollout as a Gantt chart, its batches, and the device table."""

from __future__ import annotations

from collections.abc import Sequence

from ..markup import Html, LegendItem, badge, count, empty, esc, legend, num, sig, table
from ..model import Batch, Device, Event, Rollout
from ..palette import ALARM, tone, tone_color
from ..scale import time_domain
from ..svg import Margins, time_chart
from ..timefmt import Clock, elapsed

ROW = 30.0
LABEL_CHARS = 30
# Events drawn on the Gantt chart as vertical markers.
# The rollout manager's event kinds (docs/rollout.md) that deserve a marker.
MARKED_KINDS = {"rollback": ALARM, "rollout_rolling_back": ALARM, "rollout_rolled_back": ALARM}


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _batch_label(b: Batch) -> str:
    n = len(b.devices)
    return f"{b.index} {b.label} ({n} device{'s' if n != 1 else ''})"


def _gantt(
    rollout: Rollout, batches: list[Batch], markers: list[Event], now: float, clock: Clock
) -> Html:
    started = [b for b in batches if b.started is not None]
    ends = [b.finished if b.finished is not None else now for b in started]
    times = [b.started for b in started] + ends + [e.t for e in markers]
    x_domain = time_domain(times)
    margins = Margins(top=22, right=120, bottom=34, left=170)
    height = margins.top + margins.bottom + ROW * len(batches)
    chart = time_chart(
        "rollout-chart",
        f"Rollout of {rollout.model}: batches over time",
        x_domain=x_domain,
        y_domain=(len(batches), 0.0),  # row 0 at the top
        origin=clock.origin,
        width=900.0,
        height=height,
        margins=margins,
        x_label="time since start (m:ss)",
        desc=f"{len(batches)} batches; each bar runs from start to end, coloured by result.",
        y_labels=[(i + 0.5, _short(_batch_label(b), 30)) for i, b in enumerate(batches)],
    )
    x0, _, x1, _ = chart.plot_box
    for i, b in enumerate(batches):
        top = chart.y(i) + 5
        mid = chart.y(i + 0.5)
        if i % 2:
            chart.raw(
                f'<rect class="row-bg" x="{x0:.1f}" y="{chart.y(i):.1f}" width="{x1 - x0:.1f}" '
                f'height="{ROW:.1f}"/>',
                clipped=True,
            )
        tip = (
            f"{_batch_label(b)}: {b.result}"
            + (f" — {b.reason}" if b.reason else "")
            + f". Devices: {', '.join(b.devices) or 'none'}"
        )
        if b.started is None:
            chart.raw(
                f'<text class="bar-label" x="{x0 + 6:.1f}" y="{mid:.1f}" '
                f'dominant-baseline="middle">{esc(b.result)} (not started)'
                f"<title>{esc(tip)}</title></text>"
            )
            continue
        end = b.finished if b.finished is not None else now
        left, right = chart.x(b.started), chart.x(end)
        width = max(right - left, 3.0)  # an instant batch still shows
        open_end = ' stroke-dasharray="4 2" stroke="#1a1a1a"' if b.finished is None else ""
        chart.raw(
            f'<rect class="bar" x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" '
            f'height="{ROW - 10:.1f}" rx="3" fill="{tone_color(b.result)}"{open_end}>'
            f"<title>{esc(tip)}</title></rect>"
        )
        took = elapsed(end - b.started) + (" so far" if b.finished is None else "")
        label = f"{b.result} · {took}"
        chart.raw(
            f'<text class="bar-label" x="{left + width + 5:.1f}" y="{mid:.1f}" '
            f'dominant-baseline="middle">{esc(label)}</text>'
        )
    for e in markers:
        who = f" {e.subject}" if e.subject else ""
        chart.vline(
            e.t,
            color=MARKED_KINDS[e.kind],
            label=_short(f"{e.kind}{who}"),
            dash="5 2",
            label_above=True,
        )
    results = list(dict.fromkeys(b.result for b in batches))  # distinct, in batch order
    items = [LegendItem(r, tone_color(r), "bar") for r in results]
    if markers:
        items.append(LegendItem("rollback event", ALARM, "dash"))
    return Html(f"<figure>{legend(items)}{chart.render()}</figure>")


def _batch_table(batches: list[Batch], clock: Clock) -> Html:
    rows = []
    for b in batches:
        took = (
            elapsed(b.finished - b.started)
            if b.started is not None and b.finished is not None
            else "–"
        )
        rows.append(
            [
                b.index,
                b.label,
                ", ".join(b.devices) or "–",
                clock.rel(b.started) if b.started is not None else "–",
                clock.rel(b.finished) if b.finished is not None else "–",
                took,
                badge(b.result, tone(b.result)),
                b.reason or "",
            ]
        )
    return table(
        ["#", "batch", "devices", "started", "finished", "took", "result", "reason"],
        rows,
        numeric=(0,),
    )


def render_devices(devices: Sequence[Device]) -> Html:
    head = '<h3 id="devices">Devices</h3>'
    if not devices:
        return Html(head + empty("no devices reported"))
    rows = []
    for d in sorted(devices, key=lambda d: d.device):
        online = {True: badge("online", "passed"), False: badge("offline", "failed")}.get(
            d.online, "–"
        )
        rate = f" ({d.errors / d.requests:.1%})" if d.errors is not None and d.requests else ""
        rows.append(
            [
                d.device,
                online,
                d.model or "–",
                count(d.requests),
                count(d.errors) + rate,
                sig(d.p99_ms),
                num(d.rss_mb, 1),
            ]
        )
    return Html(
        head
        + table(
            ["device", "status", "model", "requests", "errors", "p99 ms", "RSS MB"],
            rows,
            numeric=(3, 4, 5, 6),
        )
    )


def render_rollout(
    rollout: Rollout | None,
    events: Sequence[Event],
    devices: Sequence[Device],
    now: float,
    clock: Clock,
) -> Html:
    head = '<section id="rollout"><h2>Rollout</h2>'
    if rollout is None:
        return Html(head + empty("no rollout ran") + render_devices(devices) + "</section>")
    previous = f" replacing <strong>{esc(rollout.previous)}</strong>" if rollout.previous else ""
    intro = (
        f'<p class="lead">Staged rollout of <strong>{esc(rollout.model)}</strong>{previous}: '
        f"{badge(rollout.state, tone(rollout.state))}</p>"
    )
    batches = sorted(rollout.batches, key=lambda b: b.index)
    if not batches:
        body = empty("the rollout has no batches")
    elif all(b.started is None for b in batches):
        body = Html(empty("no batch has started yet") + _batch_table(batches, clock))
    else:
        markers = [e for e in events if e.kind in MARKED_KINDS]
        body = Html(_gantt(rollout, batches, markers, now, clock) + _batch_table(batches, clock))
    return Html(head + intro + body + render_devices(devices) + "</section>")
