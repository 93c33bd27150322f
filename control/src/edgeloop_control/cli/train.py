"""``edgeloop train``: train, export to ONNX, verify parity, register and track."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeloop_control.cli.common import console, err_console, fail, print_json, state, table
from edgeloop_control.errors import EdgeloopError

if TYPE_CHECKING:
    from edgeloop_control.infra.workspace import Workspace

STAGES = ("auto", "none", "champion", "challenger")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


def train_cmd(
    ctx: typer.Context,
    view: Annotated[str, typer.Option("--view", help="feature view (NAME or NAME@vN)")],
    target: Annotated[str, typer.Option("--target", help="label column")],
    # hgb by default: as compact on a device as it is accurate; onnxruntime holds a
    # random forest at ~14x its file size (docs/operations.md).
    algo: Annotated[str, typer.Option(help="logreg | rf | hgb")] = "hgb",
    name: Annotated[
        str | None, typer.Option("--name", help="model name (default: the view)")
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="comma-separated feature columns (default: all)")
    ] = None,
    exclude: Annotated[
        str | None, typer.Option(help="comma-separated columns to leave out")
    ] = None,
    task: Annotated[str, typer.Option(help="auto | classification | regression")] = "auto",
    holdout: Annotated[float, typer.Option(help="fraction of rows held out for evaluation")] = 0.2,
    split: Annotated[
        str,
        typer.Option(
            help="time (the most recent rows held out) | random (seeded) | auto: time when "
            "the view has an event timestamp, random otherwise"
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    calibration: Annotated[
        str,
        typer.Option(
            help="auto | isotonic | sigmoid | none: the map agents use to estimate accuracy "
            "without labels (auto: isotonic from 1,000 holdout rows, else sigmoid)"
        ),
    ] = "auto",
    stage: Annotated[
        str, typer.Option(help="auto | none | champion | challenger (auto: gate vs champion)")
    ] = "auto",
    gate_metric: Annotated[str, typer.Option(help="champion gate metric")] = "f1",
    gate_margin: Annotated[float, typer.Option(help="champion gate margin")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train, export to ONNX, verify parity, register MODEL@vN and track the run."""
    from edgeloop_agent.wire.names import InvalidName, check_model_name
    from edgeloop_control.jobs.train_and_register import train_and_register
    from edgeloop_control.training import TrainConfig

    if stage not in STAGES:
        fail(f"--stage must be auto, none, champion or challenger, got {stage!r}", 2)
    ws = state(ctx).workspace
    model_name = name or view.split("@")[0]
    try:
        check_model_name("model name", model_name)  # before minutes of training, not after
    except InvalidName as exc:  # an agent-side error, not an EdgeloopError
        fail(str(exc))
    config = TrainConfig(
        target=target,
        features=_split(features),
        algo=algo,
        task=task,
        seed=seed,
        holdout=holdout,
        split=split,
        exclude=_split(exclude) or [],
        calibration=calibration,
    )
    spinner = console.status(f"training {model_name} ({algo}) on {view}", spinner="dots")
    try:
        with nullcontext() if as_json else spinner:
            outcome = train_and_register(
                ws,
                name=model_name,
                config=config,
                view=view,
                stage=stage,
                gate_metric=gate_metric,
                gate_margin=gate_margin,
            )
    except EdgeloopError:
        raise  # the CLI's one handler prints it
    except ValueError as exc:  # e.g. a gate metric scikit-learn refuses: still one line
        fail(str(exc))
    if as_json:
        print_json(outcome.to_dict())
        return
    res = outcome.result
    metrics = {k: v for k, v in res.metrics.items() if isinstance(v, float)}
    console.print(
        table(
            f"{outcome.version.ref}  ({res.task}, {res.algo}, {res.n_rows} rows)",
            ["metric", "holdout"],
            [[k, f"{v:.4f}"] for k, v in metrics.items()],
        )
    )
    console.print(parity_line(res.parity))
    console.print(size_line(len(res.onnx_bytes), res.algo, ws))
    if outcome.gate:
        console.print(f"champion gate vs {outcome.gate['champion']}: {outcome.gate['reason']}")
    for note in outcome.notes:
        err_console.print(f"note: {note}")
    stage_txt = f" stage [bold]{outcome.stage}[/]" if outcome.stage else ""
    console.print(
        f"registered [bold green]{outcome.version.ref}[/]{stage_txt} (run {outcome.run_id})"
    )


def parity_line(parity: dict[str, Any]) -> str:
    """What the parity gate checked, in the terms of the model's task."""
    head = f"ONNX matches scikit-learn on {parity['n_rows']} held-out rows: "
    if parity.get("task") == "regression":
        return head + f"max relative difference {parity.get('max_rel_diff') or 0:.2e}"
    return head + (
        f"{parity.get('label_mismatches') or 0} label mismatches, "
        f"max probability difference {parity.get('max_prob_diff') or 0:.2e}"
    )


def size_line(size: int, algo: str, ws: Workspace) -> str:
    """The artifact's size and the agent memory it will need, with a warning past budget."""
    from edgeloop_control.training.footprint import agent_memory_estimate

    estimate = agent_memory_estimate(size, algo)
    budget = int(ws.section("train").get("agent_memory_budget_mb", 200))
    line = (
        f"artifact {size / 2**20:.2f} MB; an agent serving it needs about "
        f"{estimate / 2**20:.0f} MB resident (two versions during a swap or an A/B test: "
        f"{agent_memory_estimate(size, algo, models=2) / 2**20:.0f} MB)"
    )
    if estimate > budget * 2**20:
        line += (
            f"\n[bold yellow]warning:[/] over the {budget} MB agent memory budget "
            # Escaped bracket: rich would take "[train]" for markup and drop it.
            "(\\[train] agent_memory_budget_mb); the shipped unit's MemoryMax is 256M. "
            "Try --algo hgb or fewer/shallower trees."
        )
    return line


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]
