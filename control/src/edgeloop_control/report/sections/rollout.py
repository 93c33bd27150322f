"""Section 4: the staged rollout as a Gantt chart, its batches, and the device table."""

from __future__ import annotations

import math
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
    rollout: Rollout,
    batches: list[Batch],
    markers: list[Event],
    now: float,
    clock: Clock,
    suffix: str,
) -> Html:
    started = [b for b in batches if b.started is not None]
    ends = [b.finished if b.finished is not None else now for b in started]
    times = [b.started for b in started] + ends + [e.t for e in markers]
    x_domain = time_domain(times)
    margins = Margins(top=22, right=120, bottom=34, left=170)
    height = margins.top + margins.bottom + ROW * len(batches)
    chart = time_chart(
        f"rollout-chart{suffix}",
        f"Rollout of {rollout.model}: batches over time",
        x_domain=x_domain,
        y_domain=(len(batches), 0.0),  # row 0 at the top
        clock=clock,
        width=900.0,
        height=height,
        margins=margins,
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


def render_devices(devices: Sequence[Device], clock: Clock) -> Html:
    """The fleet: one row per device, its state, versions, traffic, memory and outbox.
    Columns nobody reported anything for are left out rather than shown as dashes."""
    head = '<section id="devices"><h2>Fleet</h2>'
    if not devices:
        return Html(head + empty("no devices reported") + "</section>")
    columns: list[tuple[str, bool, object]] = [
        ("device", False, lambda d: d.device),
        ("status", False, lambda d: {True: badge("online", "passed"),
                                     False: badge("offline", "failed")}.get(d.online, "–")),
        ("serving", False, lambda d: d.model or "–"),
        ("desired", False, lambda d: d.desired or "–"),
        ("drift", False, lambda d: d.drift or "–"),
        ("requests", True, lambda d: count(d.requests)),
        ("errors", True, lambda d: count(d.errors) + (
            f" ({d.errors / d.requests:.1%})" if d.errors is not None and d.requests else "")),
        ("p99 ms", True, lambda d: sig(d.p99_ms)),
        ("RSS MB", True, lambda d: num(d.rss_mb, 1)),
        ("outbox", True, lambda d: count(d.outbox_depth)),
        ("last seen", False, lambda d: clock.utc(d.last_seen) if d.last_seen else "–"),
    ]  # fmt: skip
    fields = {"serving": "model", "desired": "desired", "drift": "drift", "requests": "requests",
              "errors": "errors", "p99 ms": "p99_ms", "RSS MB": "rss_mb",
              "outbox": "outbox_depth", "last seen": "last_seen"}  # fmt: skip
    shown = [
        c
        for c in columns
        if c[0] not in fields or any(getattr(d, fields[c[0]]) is not None for d in devices)
    ]
    rows = [[fn(d) for _, _, fn in shown] for d in sorted(devices, key=lambda d: d.device)]  # type: ignore[operator]
    online = sum(1 for d in devices if d.online)
    return Html(
        head
        + f'<p class="facts">{len(devices)} devices, {online} online.</p>'
        + table(
            [name for name, _, _ in shown],
            rows,
            numeric=[i for i, (_, right, _) in enumerate(shown) if right],
            cls="data fleet",
        )
        + "</section>"
    )


def _span(rollout: Rollout, now: float) -> tuple[float, float] | None:
    starts = [b.started for b in rollout.batches if b.started is not None]
    if not starts:
        return None
    ends = [b.finished if b.finished is not None else now for b in rollout.batches
            if b.started is not None]  # fmt: skip
    return (min(starts), max(ends))


def _markers(rollout: Rollout, events: Sequence[Event], ids: set[str], now: float) -> list[Event]:
    """Rollback events of this rollout: those naming it, or (older events that name a
    device) those inside its time span and naming no other rollout."""
    span = _span(rollout, now)
    out = []
    for e in events:
        if e.kind not in MARKED_KINDS:
            continue
        named = bool(rollout.id) and e.subject == rollout.id
        during = span is not None and span[0] - 1 <= e.t <= span[1] + 1
        if named or (e.subject not in ids and during):
            out.append(e)
    return out


def render_rollouts(
    rollouts: Sequence[Rollout],
    events: Sequence[Event],
    now: float,
    clock: Clock,
    why_empty: str = "no rollout ran",
) -> Html:
    head = '<section id="rollout"><h2>Rollouts</h2>'
    if not rollouts:
        return Html(head + empty(why_empty) + "</section>")
    ordered = sorted(rollouts, key=lambda r: (_span(r, now) or (math.inf, 0.0))[0])
    ids = {r.id for r in ordered if r.id}
    if len(ordered) > 1:
        head += f'<p class="facts">{len(ordered)} rollouts, oldest first.</p>'
    parts = []
    for i, rollout in enumerate(ordered):
        suffix = "" if i == 0 else f"-{i + 1}"
        parts.append(_render_one(rollout, _markers(rollout, events, ids, now), now, clock, suffix))
    return Html(head + "".join(parts) + "</section>")


def _render_one(
    rollout: Rollout, markers: list[Event], now: float, clock: Clock, suffix: str
) -> Html:
    previous = f" replacing <strong>{esc(rollout.previous)}</strong>" if rollout.previous else ""
    ident = f" <code>{esc(rollout.id)}</code>" if rollout.id else ""
    intro = (
        f'<h3 class="item-title">{esc(rollout.model)} {badge(rollout.state, tone(rollout.state))}'
        f'</h3><p class="lead">Staged rollout{ident} of <strong>{esc(rollout.model)}</strong>'
        f"{previous}: {badge(rollout.state, tone(rollout.state))}</p>"
    )
    batches = sorted(rollout.batches, key=lambda b: b.index)
    if not batches:
        body = empty("the rollout has no batches")
    elif all(b.started is None for b in batches):
        body = Html(empty("no batch has started yet") + _batch_table(batches, clock))
    else:
        body = Html(
            _gantt(rollout, batches, markers, now, clock, suffix) + _batch_table(batches, clock)
        )
    return Html(f'<article class="item" id="rollout{suffix}">{intro}{body}</article>')
