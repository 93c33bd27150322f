"""``edgeloop ab``: A/B experiments between a champion and a challenger.

These commands change state and publish; the running ``edgeloop serve`` daemon evaluates the
experiments every second and acts on their decisions (docs/experiments.md). ``status`` reads
the control database only, so it works without a broker and without the daemon.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer

from edgeloop_control.cli.abplan import plan_cmd
from edgeloop_control.cli.common import console, err_console, fail, print_json, state, table
from edgeloop_control.fleet.desired import DeployError
from edgeloop_control.fleet.inventory import UnknownDevice, require_known
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import BrokerError, connected
from edgeloop_control.infra.workspace import WorkspaceError

# edgeloop_control.policies.experiments pulls in scipy (seconds on a small box): it is
# imported inside the commands, so `edgeloop --help` and unrelated commands do not pay for it.

app = typer.Typer(
    no_args_is_help=True,
    help="A/B experiments: champion vs challenger, decided by always-valid statistics.",
)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

_STATE_STYLE = {
    "running": "yellow",
    "decided": "bold yellow",
    "promoting": "green",
    "promoted": "bold green",
    "rolling_back": "red",
    "rolled_back": "bold red",
}
_ACTION_STYLE = {"promote": "green", "rollback": "red", "continue": "yellow"}


def _model_of(ref: str) -> str:
    for sep in "@#:":
        if sep in ref:
            return ref.split(sep, 1)[0]
    fail(f"{ref!r} is not MODEL@vN (or MODEL#stage)")


@app.command("start")
def start(
    ctx: typer.Context,
    champion: Annotated[str, typer.Argument(help="the current model: MODEL@vN or MODEL#champion")],
    challenger: Annotated[str, typer.Argument(help="the candidate: MODEL@vN")],
    device: Annotated[list[str], typer.Option("--device", "-d", help="device id; repeatable")],
    weight: Annotated[
        str | None,
        typer.Option(help="challenger's share of traffic: 10%, 0.1 or 10 (percent) [config: 50%]"),
    ] = None,
    manual: Annotated[
        bool | None,
        typer.Option(
            "--manual/--auto",
            help="wait for `edgeloop ab promote/stop` instead of acting on the decision "
            "[config: auto]",
        ),
    ] = None,
    cause: Annotated[str | None, typer.Option(help="why; recorded in the events")] = None,
    new_device: Annotated[
        bool,
        typer.Option("--new-device", help="register devices the inventory does not know yet"),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Split the devices' traffic between champion and challenger and start measuring.

    Every device must be known (connected, or registered with `edgeloop fleet add`) unless
    --new-device; devices offline longer than [fleet] offline_after_s are skipped."""
    from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager

    st = state(ctx)
    ws = st.workspace
    model = _model_of(champion)
    if _model_of(challenger) != model:
        fail(f"{champion} and {challenger} are versions of different models")
    db = ControlDB(ws.control_db)
    try:
        # Before connecting: a bad or unknown id is not a broker error.
        require_known(db, device, new_device=new_device, source="edgeloop ab start --new-device")
    except (DeployError, UnknownDevice) as exc:
        db.close()
        fail(str(exc))
    try:
        with connected(st.broker) as client:
            manager = ExperimentManager(ws, db, client)
            exp = manager.start(
                model,
                champion,
                challenger,
                device,
                weight=weight,
                cause=cause,
                auto_decide=None if manual is None else not manual,
            )
    except (BrokerError, ExperimentError, WorkspaceError) as exc:
        fail(str(exc))
    finally:
        db.close()
    if as_json:
        print_json(exp)
        return
    w = exp["weights"]
    console.print(
        f"[bold]{exp['id']}[/] started: {exp['champion']} {w['champion']:g}% vs "
        f"{exp['challenger']} {w['challenger']:g}% on {', '.join(exp['devices'])}"
    )
    if exp.get("skipped_offline"):
        console.print(
            "skipped (offline longer than [fleet] offline_after_s): "
            + ", ".join(exp["skipped_offline"]),
            highlight=False,
            markup=False,
        )
    console.print(
        "`edgeloop serve` evaluates it every second"
        + ("" if exp["auto_decide"] else " and waits for `edgeloop ab promote/stop`")
        + f"; follow it with `edgeloop ab status {exp['id']}`."
    )


@app.command("status")
def status(
    ctx: typer.Context,
    experiment: Annotated[str | None, typer.Argument(help="experiment id (default: all)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Experiments with their statistics, guardrails and decision (no broker needed)."""
    from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager

    ws = state(ctx).workspace
    db = ControlDB(ws.control_db)
    try:
        reports = ExperimentManager(ws, db, None).status(experiment)
        from edgeloop_control.cli.retraining import failing_lines

        warnings = [] if as_json else failing_lines(db)
    except (ExperimentError, WorkspaceError) as exc:
        fail(str(exc))
    finally:
        db.close()
    for line in warnings:
        err_console.print(f"warning: {line}", style="yellow", highlight=False, markup=False)
    if as_json:
        print_json(reports if experiment is None else reports[0])
        return
    if not reports:
        console.print(
            "no experiments yet: start one with `edgeloop ab start MODEL@vA MODEL@vB --device ID`"
        )
        return
    if experiment is None:
        _overview(reports)
    else:
        _detail(reports[0])


@app.command("stop")
def stop(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(help="experiment id")],
    reason: Annotated[str | None, typer.Option(help="why; recorded in the events")] = None,
    as_json: JsonOpt = False,
) -> None:
    """End an experiment keeping the champion: its devices go back to it at 100%."""
    from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager

    st = state(ctx)
    ws = st.workspace
    db = ControlDB(ws.control_db)
    try:
        with connected(st.broker) as client:
            exp = ExperimentManager(ws, db, client).stop(experiment, reason)
    except (BrokerError, ExperimentError, WorkspaceError) as exc:
        fail(str(exc))
    finally:
        db.close()
    _acted(exp, as_json)


@app.command("promote")
def promote(
    ctx: typer.Context,
    experiment: Annotated[str, typer.Argument(help="experiment id")],
    force: Annotated[
        bool,
        typer.Option("--force", help="promote although the experiment did not decide promote"),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make the challenger the champion; `edgeloop serve` then rolls it out to the fleet."""
    from edgeloop_control.policies.experiments import ExperimentError, ExperimentManager

    ws = state(ctx).workspace
    db = ControlDB(ws.control_db)
    try:
        # The registry change happens here; the staged rollout is the daemon's (it owns the
        # rollout manager and its gates), so this command needs no broker.
        exp = ExperimentManager(ws, db, None).promote(experiment, force=force)
    except (ExperimentError, WorkspaceError) as exc:
        fail(str(exc))
    finally:
        db.close()
    _acted(exp, as_json)


# -- output --------------------------------------------------------------------------------


def _acted(exp: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(exp)
        return
    console.print(f"[bold]{exp['id']}[/]: {_state(exp['state'])}")
    if exp["decision"]:
        console.print(exp["decision"]["reason"], highlight=False)
    if exp["pending"]:
        console.print(f"pending: {', '.join(exp['pending'])}" + _error(exp), highlight=False)


def _error(exp: dict[str, Any]) -> str:
    return f" (last error: {exp['last_error']})" if exp.get("last_error") else ""


def _state(name: str) -> str:
    style = _STATE_STYLE.get(name, "")
    return f"[{style}]{name}[/]" if style else name


def _num(x: Any, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def _interval(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def labels_note(variants: dict[str, Any]) -> str | None:
    """Why an arm can show more labels than requests, said when it does.

    Requests are counted in the report that served them, labels in the report they arrive
    in, joined on the device to the variant that made the prediction. The first report of
    each device in an experiment is left out (docs/experiments.md), but labels for its
    requests, and for the champion's requests from before the experiment, arrive later and
    count: so labels are not a subset of the requests shown.
    """
    over = [
        arm
        for arm in ("champion", "challenger")
        if (v := variants.get(arm) or {}) and v.get("n", 0) > v.get("requests", 0)
    ]
    if not over:
        return None
    return (
        f"labels > requests for the {' and '.join(over)}: labels count when they arrive, "
        "requests when served; labels for requests served before the first counted report "
        "(or, for the champion, before the experiment) arrive later and are counted"
    )


def _overview(reports: list[dict[str, Any]]) -> None:
    rows = []
    for r in reports:
        v = r["variants"] or {}
        a, b = v.get("champion") or {}, v.get("challenger") or {}
        seq = r["sequential"] or {}
        verdict = r["decision"] or r["evaluation"] or {}
        action = verdict.get("action", "")
        rows.append(
            [
                r["id"],
                _state(r["state"]),
                f"{r['champion']} {r['weights']['champion']:g}%",
                f"{r['challenger']} {r['weights']['challenger']:g}%",
                f"{a.get('n', 0)} / {b.get('n', 0)}",
                f"{_num(a.get('metric'))} / {_num(b.get('metric'))}",
                _num(seq.get("p_value"), ".3g"),
                f"[{_ACTION_STYLE.get(action, '')}]{action}[/]" if action else "",
                _when(r["created_at"]),
            ]
        )
    console.print(
        table(
            "A/B experiments",
            [
                "id",
                "state",
                "champion",
                "challenger",
                "labels",
                "metric",
                "p (seq.)",
                "decision",
                "started",
            ],
            rows,
            wrap=("champion", "challenger", "labels", "metric"),
            droppable=("started", "p (seq.)", "metric"),
        )
    )


def _detail(r: dict[str, Any]) -> None:
    console.print(
        f"[bold]{r['id']}[/] {_state(r['state'])}: {r['model']} on {', '.join(r['devices'])}, "
        f"{'automatic' if r['auto_decide'] else 'manual'} decisions, started "
        f"{_when(r['created_at'])}" + (f" (cause: {r['cause']})" if r["cause"] else ""),
        highlight=False,
    )
    if r.get("skipped_offline"):
        console.print(
            f"skipped (offline longer than [fleet] offline_after_s): "
            f"{', '.join(r['skipped_offline'])}",
            highlight=False,
            markup=False,
        )
    variants = r["variants"] or {}
    rows = []
    for arm in ("champion", "challenger"):
        v = variants.get(arm) or {}
        rows.append(
            [
                arm,
                r[arm],
                f"{r['weights'][arm]:g}%",
                v.get("requests", 0),
                _num(v.get("error_rate"), ".2%") if v.get("error_rate") is not None else "-",
                _num(v.get("p99_ms"), ".3g"),
                v.get("n", 0),
                _num(v.get("metric")),
                _interval(v.get("ci")),
            ]
        )
    ci_pct = f"{(1 - r['alpha']):.0%} CI"
    note = labels_note(variants)
    console.print(
        table(
            None,
            [
                "arm",
                "version",
                "weight",
                "requests",
                "errors",
                "p99 ms",
                "labels",
                r["metric"],
                ci_pct,
            ],
            rows,
        )
    )
    if note:
        console.print(note, highlight=False, style="dim")
    seq = r["sequential"] or {}
    fixed = r["fixed_horizon"] or {}
    srm = r["srm"] or {}
    diff = r["difference"] or {}
    better = "higher" if r["higher_is_better"] else "lower"
    tests = [
        [
            "difference (challenger - champion)",
            f"{_num(diff.get('estimate'))} ({better} is better)",
        ],
        ["always-valid p (mSPRT)", f"{_num(seq.get('p_value'), '.3g')} (alpha {r['alpha']:g})"],
        [
            "confidence sequence",
            "empty: the effect changed, review"
            if seq.get("confidence_sequence_empty")
            else _interval(seq.get("confidence_sequence")),
        ],
        ["tau", f"{_num(seq.get('tau'), '.3g')} ({seq.get('tau_source', '')})"],
        ["looks counted", str(seq.get("looks", 0))],
        [
            f"{fixed.get('test', 'fixed-horizon test')} (reference only)",
            f"p {_num(fixed.get('p_value'), '.3g')}",
        ],
        [f"sample ratio (unit: {srm.get('unit', 'requests')})", srm.get("reason", "-")],
    ]
    console.print(table(None, ["statistic", "value"], tests, wrap=("statistic", "value")))
    guards = [
        [g["name"], "[green]pass[/]" if g["passed"] else "[bold red]FAIL[/]", g["reason"]]
        for g in r["guardrails"]
    ]
    console.print(table(None, ["guardrail", "", "detail"], guards, wrap=("detail",)))
    if r["decision"]:
        d = r["decision"]
        console.print(
            f"[bold]decision[/] ({d.get('source')}, {_when(d.get('t'))}): "
            f"[{_ACTION_STYLE.get(d['action'], '')}]{d['action']}[/]",
            highlight=False,
        )
        console.print(d["reason"], highlight=False)
    if r["evaluation"] and (not r["decision"] or r["state"] == "decided"):
        e = r["evaluation"]
        console.print(
            f"[bold]now[/]: [{_ACTION_STYLE.get(e['action'], '')}]{e['action']}[/]", highlight=False
        )
        console.print(e["reason"], highlight=False)
    if r["pending"]:
        console.print(f"pending: {', '.join(r['pending'])}{_error(r)}", highlight=False)
    if r["rollout"]:
        console.print(f"rollout: {r['rollout'].get('id')}", highlight=False)
    looks = r["looks"][-10:]
    if looks:
        now = time.time()
        rows = [
            [
                lk["seq"],
                f"{now - lk['t']:.0f}s ago",
                f"{lk['n_champion']} / {lk['n_challenger']}",
                f"{_num(lk['champion_metric'])} / {_num(lk['challenger_metric'])}",
                _num(lk["estimate"]),
                _interval([lk["cs_low"], lk["cs_high"]]),
                _num(lk["p_value"], ".3g"),
                _num(lk["srm_p_value"], ".3g"),
            ]
            for lk in looks
        ]
        console.print(
            table(
                f"last {len(looks)} of {len(r['looks'])} looks",
                ["#", "when", "labelled", "metric", "diff", "conf. sequence", "p (seq.)", "SRM p"],
                rows,
            )
        )


# `ab plan` is a calculator with no state: its own module keeps this one about experiments.
app.command("plan")(plan_cmd)
