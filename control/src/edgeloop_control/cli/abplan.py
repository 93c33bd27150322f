"""``edgeloop ab plan``: how many labelled outcomes (and days) an A/B test needs.

A calculator over ``stats/planning.py`` for the always-valid test as configured; it reads
no workspace and needs no broker (docs/ab-statistics.md, "Planning").
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_control.cli.common import console, fail, print_json

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def plan_cmd(
    baseline: Annotated[
        float,
        typer.Option(help="champion's metric: accuracy (binary) or mean loss (continuous)"),
    ],
    effect: Annotated[
        float, typer.Option(help="smallest difference worth detecting, challenger - champion")
    ],
    kind: Annotated[str, typer.Option(help="binary (accuracy) or continuous (loss)")] = "binary",
    sd: Annotated[
        float | None, typer.Option(help="per-outcome standard deviation (continuous only)")
    ] = None,
    weight: Annotated[
        str, typer.Option(help="challenger's share of traffic: 20%, 0.2 or 20 (percent)")
    ] = "50%",
    alpha: Annotated[float, typer.Option(help="significance level of the test")] = 0.05,
    power: Annotated[float, typer.Option(help="wanted chance of detecting the effect")] = 0.8,
    tau: Annotated[
        float | None, typer.Option(help="mixing sd in metric units [automatic: 0.1 sd]")
    ] = None,
    labels_per_day: Annotated[
        float | None, typer.Option(help="labelled outcomes per day over both arms")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """How many labelled outcomes (and days) the always-valid test needs for an effect."""
    from edgeloop_control.errors import ConfigError
    from edgeloop_control.infra.shares import parse_share
    from edgeloop_control.stats.planning import plan

    try:  # the planner takes percents; round off the float noise of fraction * 100
        share = round(100.0 * parse_share(weight, "--weight", allow_one=False), 9)
    except ConfigError as exc:
        fail(str(exc))
    try:
        p = plan(
            kind=kind,
            baseline=baseline,
            effect=effect,
            weights=(100.0 - share, share),
            alpha=alpha,
            power=power,
            tau=tau,
            sd=sd,
        )
        days = None if labels_per_day is None else p.days(labels_per_day)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        print_json(
            {
                "kind": p.kind,
                "baseline": p.baseline,
                "effect": p.effect,
                "alpha": p.alpha,
                "power": p.power,
                "tau": p.tau,
                "weights": list(p.weights),
                "total": p.total,
                "champion": p.per_arm[0],
                "challenger": p.per_arm[1],
                "days": days,
            }
        )
        return
    console.print(
        f"{p.total:,} labelled outcomes ({p.per_arm[0]:,} champion, {p.per_arm[1]:,} "
        f"challenger) give at least {p.power:.0%} power to detect {p.effect:+g} from "
        f"{p.baseline:g} at alpha {p.alpha:g} with the always-valid test (tau {p.tau:.3g})"
        + ("" if days is None else f"; about {days:.1f} days at {labels_per_day:g} labels/day")
        + ". A lower bound on power at that horizon, whenever you look (docs/ab-statistics.md).",
        highlight=False,
    )
