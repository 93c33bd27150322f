"""``edgeloop init``, ``ingest`` and ``train``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import console, err_console, fail, print_json, state, table


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("ingest")(ingest)
    app.command("train")(train_cmd)
    app.command("demo")(demo)


def init(
    ctx: typer.Context,
    directory: Annotated[
        Path | None, typer.Argument(help="workspace directory (default: .)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a workspace: config, feature store, registry and signing key."""
    from edgeloop_control.featurestore import FeatureStore
    from edgeloop_control.infra.signing import SigningError, ensure_keypair
    from edgeloop_control.infra.workspace import Workspace, WorkspaceError
    from edgeloop_control.registry import Registry, RegistryError

    st = state(ctx)
    target = directory or Path(st.workspace_arg or ".")
    try:
        ws = Workspace.init(target, broker=st.broker_arg)
        FeatureStore(ws.feature_store_dir)
        ensure_keypair(ws.signing_key_path, ws.public_key_path)
        Registry.for_workspace(ws)
    except (WorkspaceError, RegistryError, SigningError, OSError) as exc:
        fail(str(exc))
    info = {
        "workspace": str(ws.root),
        "config": str(ws.root / "edgeloop.toml"),
        "feature_store": str(ws.feature_store_dir),
        "registry": str(ws.registry_dir),
        "dvc_remote": ws.registry_remote,
        "public_key": str(ws.public_key_path),
    }
    if as_json:
        print_json(info)
        return
    console.print(f"[green]created workspace[/] {ws.root}")
    console.print(
        f"give agents the signing key's public half: [bold]{ws.public_key_path}[/] "
        "(edgeloop-agent --trusted-key)"
    )


def ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file", exists=True, dir_okay=False)],
    view: Annotated[str, typer.Option("--view", help="feature view name")],
    entity: Annotated[
        list[str] | None, typer.Option("--entity", help="entity key column; repeatable")
    ] = None,
    timestamp: Annotated[str | None, typer.Option("--timestamp", help="event time column")] = None,
    ttl: Annotated[str | None, typer.Option(help="feature TTL, e.g. 7d or 12h")] = None,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="allow a schema change: create the next version")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load a CSV or Parquet file into the feature store."""
    from edgeloop_control.cli.features import ingest_file

    ingest_file(
        state(ctx).workspace,
        file,
        view,
        entity,
        timestamp,
        ttl=ttl,
        new_version=new_version,
        as_json=as_json,
    )


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
    stage: Annotated[
        str, typer.Option(help="auto | none | champion | challenger (auto: gate vs champion)")
    ] = "auto",
    gate_metric: Annotated[str, typer.Option(help="champion gate metric")] = "f1",
    gate_margin: Annotated[float, typer.Option(help="champion gate margin")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train, export to ONNX, verify parity, register MODEL@vN and track the run."""
    from edgeloop_control.featurestore import FeatureStoreError
    from edgeloop_control.jobs.train_and_register import train_and_register
    from edgeloop_control.registry import RegistryError
    from edgeloop_control.tracking import TrackingError
    from edgeloop_control.training import TrainConfig, TrainingError

    if stage not in ("auto", "none", "champion", "challenger"):
        fail(f"--stage must be auto, none, champion or challenger, got {stage!r}")
    from edgeloop_agent.wire.names import InvalidName, check_model_name

    ws = state(ctx).workspace
    model_name = name or view.split("@")[0]
    try:
        check_model_name("model name", model_name)  # before minutes of training, not after
    except InvalidName as exc:
        fail(str(exc))
    try:
        config = TrainConfig(
            target=target,
            features=_split(features),
            algo=algo,
            task=task,
            seed=seed,
            holdout=holdout,
            split=split,
            exclude=_split(exclude) or [],
        )
        with (
            console.status(f"training {model_name} ({algo}) on {view}", spinner="dots")
            if not as_json
            else _null()
        ):
            outcome = train_and_register(
                ws,
                name=model_name,
                config=config,
                view=view,
                stage=stage,
                gate_metric=gate_metric,
                gate_margin=gate_margin,
            )
    except (TrainingError, FeatureStoreError, RegistryError, TrackingError, ValueError) as exc:
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


def size_line(size: int, algo: str, ws: Any) -> str:
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
            "([train] agent_memory_budget_mb); the shipped unit's MemoryMax is 256M. "
            "Try --algo hgb or fewer/shallower trees."
        )
    return line


def _split(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def demo(
    ctx: typer.Context,
    workdir: Annotated[
        Path | None, typer.Option(help="keep the demo's workspace and logs here")
    ] = None,
    devices: Annotated[int, typer.Option(min=2, max=10)] = 3,
    rate: Annotated[float, typer.Option(help="requests/s per device")] = 40.0,
    report: Annotated[Path | None, typer.Option(help="where to write the HTML report")] = None,
) -> None:
    """Run the whole loop on this machine with a private broker and real agents."""
    from edgeloop_control.demo.run import run_demo

    try:
        run_demo(
            broker_url=state(ctx).broker_arg,
            workdir=workdir,
            devices=devices,
            rate=rate,
            report_path=report,
            console=console,
        )
    except (RuntimeError, OSError) as exc:
        fail(f"demo failed: {exc}")
