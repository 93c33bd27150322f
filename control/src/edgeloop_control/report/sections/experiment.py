"""Section 3: the A/B experiment, its always-valid confidence sequence and p-values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

from ..markup import (
    Html,
    LegendItem,
    badge,
    count,
    empty,
    esc,
    interval,
    legend,
    num,
    p_value,
    table,
)
from ..model import Experiment, Look
from ..palette import (
    ALARM,
    CHALLENGER,
    CHAMPION,
    ESTIMATE,
    MARKER,
    P_FIXED,
    P_SEQUENTIAL,
    THRESHOLD,
    ZERO,
    tone,
)
from ..scale import pad, span_of, time_domain
from ..svg import Chart, Point, time_chart
from ..timefmt import Clock


class _Size(TypedDict):
    width: float
    height: float


WIDE: _Size = {"width": 760.0, "height": 250.0}
# The log axis needs a floor: a p-value of exactly 0 (or 1e-300) is drawn at the floor.
P_FLOOR = 1e-12


def _mark_decision(chart: Chart, exp: Experiment) -> None:
    d = exp.decision
    if d is not None and d.t is not None:
        chart.vline(d.t, color=MARKER, label=f"decision: {d.action}", dash="6 3")


def _metric_chart(
    exp: Experiment, looks: list[Look], x_domain: tuple[float, float], clock: Clock, suffix: str
) -> Html:
    ts = [lk.t for lk in looks]
    values = [
        v
        for lk in looks
        for v in (lk.champion_metric, lk.challenger_metric, *lk.champion_ci, *lk.challenger_ci)
    ]
    chart = time_chart(
        f"ab-metric-chart{suffix}",
        f"{exp.metric} per arm over looks, with confidence intervals",
        x_domain=x_domain,
        y_domain=pad(*span_of(values)),
        clock=clock,
        y_label=exp.metric,
        desc=(
            f"{exp.metric} of champion {exp.champion} and challenger {exp.challenger} at each "
            f"of {len(looks)} looks; shaded bands are per-look confidence intervals."
        ),
        **WIDE,
    )
    arms = (
        ("champion", exp.champion, CHAMPION, lambda lk: lk.champion_metric,
         lambda lk: lk.champion_ci, lambda lk: lk.n_champion),
        ("challenger", exp.challenger, CHALLENGER, lambda lk: lk.challenger_metric,
         lambda lk: lk.challenger_ci, lambda lk: lk.n_challenger),
    )  # fmt: skip
    for role, name, color, metric, ci, n in arms:
        chart.band(ts, [ci(lk)[0] for lk in looks], [ci(lk)[1] for lk in looks], color=color)
        chart.line(ts, [metric(lk) for lk in looks], color=color, width=2.0)
        chart.points(
            [
                Point(
                    lk.t,
                    metric(lk),
                    color,
                    f"{role} {name} at {clock.both(lk.t)}: {exp.metric} {num(metric(lk))} "
                    f"CI {interval(*ci(lk))}, n={count(n(lk))}",
                    radius=2.6,
                )
                for lk in looks
                if metric(lk) is not None
            ]
        )
    _mark_decision(chart, exp)
    items = [
        LegendItem(f"champion {exp.champion}", CHAMPION),
        LegendItem(f"challenger {exp.challenger}", CHALLENGER),
        LegendItem("confidence interval", "#888888", "band"),
    ]
    return Html(f"<figure>{legend(items)}{chart.render()}</figure>")


def _cs_chart(
    exp: Experiment, looks: list[Look], x_domain: tuple[float, float], clock: Clock, suffix: str
) -> Html:
    ts = [lk.t for lk in looks]
    values = [v for lk in looks for v in (lk.estimate, lk.cs_low, lk.cs_high)]
    lo, hi = pad(*span_of(values, include=[0.0]), 0.08)
    chart = time_chart(
        f"ab-cs-chart{suffix}",
        f"Difference in {exp.metric} (challenger − champion) with its always-valid "
        "confidence sequence",
        x_domain=x_domain,
        y_domain=(lo, hi),
        clock=clock,
        y_label=f"Δ {exp.metric}",
        desc=(
            "The band is valid at every look at once (it may be checked after every batch); "
            "the decision is safe once it excludes zero."
        ),
        **WIDE,
    )
    chart.band(
        ts, [lk.cs_low for lk in looks], [lk.cs_high for lk in looks], color=ESTIMATE, opacity=0.2
    )
    chart.hline(0.0, color=ZERO, label="0 = no difference", dash="4 3")
    chart.line(ts, [lk.estimate for lk in looks], color=ESTIMATE, width=2.0)
    chart.points(
        [
            Point(
                lk.t,
                lk.estimate,
                ESTIMATE,
                f"look at {clock.both(lk.t)}: Δ {num(lk.estimate)}, confidence sequence "
                f"{interval(lk.cs_low, lk.cs_high)}, sequential p {p_value(lk.p_value)}",
                radius=2.6,
            )
            for lk in looks
            if lk.estimate is not None
        ]
    )
    # Which side of zero is good depends on the metric (accuracy up, loss down).
    x0, y0, _, y1 = chart.plot_box
    arrow, y = ("↑", y0 + 22) if exp.higher_is_better else ("↓", y1 - 6)
    chart.raw(
        f'<text class="direction" x="{x0 + 6:.1f}" y="{y:.1f}">{arrow} challenger better</text>'
    )
    _mark_decision(chart, exp)
    items = [
        LegendItem("estimate", ESTIMATE),
        LegendItem("always-valid confidence sequence", ESTIMATE, "band"),
        LegendItem("zero", ZERO, "dash"),
    ]
    return Html(f"<figure>{legend(items)}{chart.render()}</figure>")


def _p_chart(
    exp: Experiment, looks: list[Look], x_domain: tuple[float, float], clock: Clock, suffix: str
) -> Html:
    ts = [lk.t for lk in looks]
    alpha = exp.alpha
    positive = [
        p for lk in looks for p in (lk.p_value, lk.fixed_p_value) if p is not None and p > 0
    ]
    smallest = min([*positive, *([alpha / 10] if alpha else [0.01])])
    floor = max(P_FLOOR, 10.0 ** math.floor(math.log10(smallest)))
    chart = time_chart(
        f"ab-pvalue-chart{suffix}",
        "Sequential (always-valid) and fixed-horizon p-values over looks",
        x_domain=x_domain,
        y_domain=(floor, 1.0),
        clock=clock,
        log_y=True,
        y_label="p-value (log)",
        desc=(
            "The sequential p-value decides; the fixed-horizon p-value is for reference only "
            "and is not valid when checked at every look."
        ),
        **WIDE,
    )

    def clamp(p: float | None) -> float | None:
        return None if p is None else max(p, floor)

    chart.line(ts, [clamp(lk.fixed_p_value) for lk in looks], color=P_FIXED, dash="4 3", width=1.6)
    chart.line(ts, [clamp(lk.p_value) for lk in looks], color=P_SEQUENTIAL, width=2.0)
    chart.points(
        [
            Point(
                lk.t,
                max(lk.p_value, floor),
                P_SEQUENTIAL,
                f"look at {clock.both(lk.t)}: sequential p {p_value(lk.p_value)}, "
                f"fixed-horizon p {p_value(lk.fixed_p_value)}",
                radius=2.6,
            )
            for lk in looks
            if lk.p_value is not None
        ]
    )
    if alpha:
        chart.hline(alpha, color=THRESHOLD, label=f"α = {alpha:g}")
    _mark_decision(chart, exp)
    items = [
        LegendItem("sequential p (decides)", P_SEQUENTIAL),
        LegendItem("fixed-horizon p (reference only)", P_FIXED, "dash"),
    ]
    if alpha:
        items.append(LegendItem("α", THRESHOLD, "dash"))
    return Html(f"<figure>{legend(items)}{chart.render()}</figure>")


def _last_look(exp: Experiment, look: Look, clock: Clock) -> Html:
    level = f"{(1 - exp.alpha) * 100:g}% CI" if exp.alpha else "CI"
    arms = table(
        ["arm", "model", "n", exp.metric, level],
        [
            ["champion", exp.champion, count(look.n_champion), num(look.champion_metric),
             interval(*look.champion_ci)],
            ["challenger", exp.challenger, count(look.n_challenger), num(look.challenger_metric),
             interval(*look.challenger_ci)],
        ],
        numeric=(2, 3),
        caption=f"Last look, {clock.both(look.t)}",
    )  # fmt: skip
    srm = exp.srm
    srm_text: object = "not checked"
    if srm is not None:
        srm_text = Html(
            f"p {esc(p_value(srm.p_value))} on {esc(srm.unit)} "
            + (
                badge("mismatch: do not trust the comparison", "failed")
                if srm.flag
                else badge("ok", "passed")
            )
        )
    facts = table(
        ["figure", "value"],
        [
            [f"difference in {exp.metric} (challenger − champion)", num(look.estimate)],
            ["always-valid confidence sequence", interval(look.cs_low, look.cs_high)],
            ["sequential p-value (decides)", p_value(look.p_value)],
            ["fixed-horizon p-value (reference only, not valid under peeking)",
             p_value(look.fixed_p_value)],
            ["sample ratio mismatch (SRM)", srm_text],
        ],
        cls="data facts-table",
    )  # fmt: skip
    return Html(f'<div class="tables">{arms}{facts}</div>')


def chart_suffix(i: int) -> str:
    """Chart ids of the first item stay as they always were (``ab-metric-chart``); later
    ones get ``-2``, ``-3``: stable for a given list, unique on the page."""
    return "" if i == 0 else f"-{i + 1}"


def render_experiments(
    experiments: Sequence[Experiment], clock: Clock, why_empty: str = "no experiment ran"
) -> Html:
    head = '<section id="experiment"><h2>A/B experiments</h2>'
    if not experiments:
        return Html(head + empty(why_empty) + "</section>")
    ordered = sorted(experiments, key=_start)
    if len(ordered) > 1:
        head += f'<p class="facts">{len(ordered)} experiments, oldest first.</p>'
    return Html(
        head
        + "".join(_render_one(e, clock, i, len(ordered)) for i, e in enumerate(ordered))
        + "</section>"
    )


def _start(exp: Experiment) -> float:
    times = [lk.t for lk in exp.looks] + (
        [exp.decision.t] if exp.decision and exp.decision.t else []
    )
    return min(times) if times else math.inf


def _render_one(exp: Experiment, clock: Clock, i: int, total: int) -> Html:
    suffix = chart_suffix(i)
    state = f" {badge(exp.state, tone(exp.state))}" if exp.state else ""
    head = (
        f'<article class="item" id="experiment{suffix}"><h3 class="item-title">'
        f"{esc(exp.challenger)} vs {esc(exp.champion)}"
        f"{f' ({i + 1} of {total})' if total > 1 else ''}{state}</h3>"
    )
    direction = "higher is better" if exp.higher_is_better else "lower is better"
    settings = [f"metric {exp.metric} ({direction})"]
    if exp.alpha is not None:
        settings.append(f"α = {exp.alpha:g}")
    if exp.tau is not None:
        settings.append(f"mixture τ = {exp.tau:.3g}")
    intro = (
        f'<p class="lead">Experiment <code>{esc(exp.id)}</code>: champion '
        f"<strong>{esc(exp.champion)}</strong> vs challenger <strong>{esc(exp.challenger)}"
        f"</strong>; {esc(', '.join(settings))}. Decided by the mixture sequential probability "
        f"ratio test (mSPRT), which stays valid however often it is looked at.</p>"
    )
    d = exp.decision
    if d is None:
        verdict = Html('<p class="decision">No decision yet.</p>')
    else:
        when = f" at {esc(clock.both(d.t))}" if d.t is not None else ""
        verdict = Html(
            f'<p class="decision">Decision: {badge(d.action, tone(d.action))}{when}'
            f"{' — ' + esc(d.reason) if d.reason else ''}</p>"
        )
    looks = sorted(exp.looks, key=lambda lk: lk.t)
    if not looks:
        return Html(
            head + intro + verdict + empty("the experiment has no looks yet") + "</article>"
        )
    times = [lk.t for lk in looks] + ([d.t] if d is not None and d.t is not None else [])
    x_domain = time_domain(times)
    srm_warning = ""
    if exp.srm is not None and exp.srm.flag:
        srm_warning = (
            f'<p class="warning" style="border-color:{ALARM}">Sample ratio mismatch: the arms did '
            "not get the traffic split they were configured for, so the comparison below cannot "
            "be trusted.</p>"
        )
    return Html(
        head
        + intro
        + verdict
        + srm_warning
        + "<h4>Metric per arm</h4>"
        + _metric_chart(exp, looks, x_domain, clock, suffix)
        + "<h4>Difference with its always-valid confidence sequence</h4>"
        + _cs_chart(exp, looks, x_domain, clock, suffix)
        + "<h4>p-values over looks</h4>"
        + _p_chart(exp, looks, x_domain, clock, suffix)
        + _last_look(exp, looks[-1], clock)
        + "</article>"
    )
