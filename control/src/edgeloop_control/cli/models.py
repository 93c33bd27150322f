"""``edgeloop models``: list, inspect, promote and compare registered model versions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import (
    OneLineErrors,
    console,
    err_console,
    print_json,
    state,
    table,
)

app = typer.Typer(
    cls=OneLineErrors,
    help="Model registry (git + DVC, GTO tags). Without a command: list versions.",
    invoke_without_command=True,
    no_args_is_help=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _registry(ctx: typer.Context, *, create: bool = False) -> Any:
    from edgeloop_control.registry import Registry

    return Registry.for_workspace(state(ctx).workspace, create=create)


def _summary(mv: Any) -> dict[str, Any]:
    metrics = mv.metadata.get("metrics") if isinstance(mv.metadata, dict) else None
    return {
        "ref": mv.ref,
        "name": mv.name,
        "version": mv.version,
        "semver": mv.semver,
        "stages": list(mv.stages),
        "created_at": mv.created_at,
        "sha256": mv.sha256,
        "size": mv.size,
        "metrics": metrics if isinstance(metrics, dict) else {},
        "lineage": mv.lineage,
    }


def _metric_text(metrics: dict[str, Any], limit: int = 3) -> str:
    shown = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    return ", ".join(shown[:limit]) + (", ..." if len(shown) > limit else "")


def _list(ctx: typer.Context, name: str | None, as_json: bool) -> None:
    registry = _registry_or_none(ctx)
    versions = registry.list(name) if registry is not None else []
    if as_json:
        print_json([_summary(mv) for mv in versions])
        return
    if not versions:
        console.print("no models registered yet")
        return
    rows = [
        [
            mv.ref,
            ", ".join(mv.stages),
            mv.created_at[:16].replace("T", " "),
            mv.sha256[:12],
            f"{mv.size:,}",
            _metric_text(_summary(mv)["metrics"]),
            mv.lineage.get("parent") or "",
        ]
        for mv in versions
    ]
    console.print(
        table(
            "registered models",
            ["version", "stages", "created", "sha256", "bytes", "metrics", "parent"],
            rows,
            wrap=("stages", "metrics"),
            droppable=("sha256", "parent", "created", "bytes"),
        )
    )


def _registry_or_none(ctx: typer.Context) -> Any:
    from edgeloop_control.registry import Registry

    ws = state(ctx).workspace
    if not (ws.registry_dir / ".dvc").is_dir():
        return None
    return Registry.for_workspace(ws, create=False)


@app.callback()
def _default(
    ctx: typer.Context,
    as_json: JsonOpt = False,
) -> None:
    if ctx.invoked_subcommand is None:
        _list(ctx, None, as_json)


@app.command("ls")
def ls(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="only this model")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered versions with their stages."""
    _list(ctx, name, as_json)


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="sensor@v3, sensor@latest, sensor#champion ...")],
    as_json: JsonOpt = False,
) -> None:
    """Everything recorded about one version: metadata, lineage, signature."""
    registry = _registry(ctx)
    mv = registry.get(ref)
    if as_json:
        print_json(mv.to_dict())
        return
    rows = [
        ["version", f"{mv.ref} ({mv.tag})"],
        ["stages", ", ".join(mv.stages) or "-"],
        ["created", mv.created_at],
        ["artifact", f"{mv.artifact_path} ({mv.size:,} bytes)"],
        ["sha256", mv.sha256],
        ["signature", f"ed25519, key {mv.key_id}"],
        ["commit", mv.commit],
    ]
    # In full: docs/protocol.md sends readers here for the model's feature order.
    rows += [[f"lineage.{k}", _full(v)] for k, v in mv.lineage.items()]
    rows += [[f"metadata.{k}", _full(v)] for k, v in mv.metadata.items()]
    console.print(table(mv.ref, ["field", "value"], rows, wrap=("value",)))


@app.command("promote")
def promote(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="the version to promote, e.g. sensor@v3")],
    stage: Annotated[str, typer.Argument(help="stage to assign: champion, challenger, ...")],
    as_json: JsonOpt = False,
) -> None:
    """Assign a stage to a version (moving it off the version that held it)."""
    from edgeloop_control.registry import parse_ref

    registry = _registry(ctx)
    parsed = parse_ref(ref)
    from edgeloop_control.registry.refs import check_stage

    stage = check_stage(stage)  # the name as stored: lower case
    mv = registry.promote(parsed.name, _version_of(registry, ref), stage)
    if as_json:
        print_json({"stage": stage, "version": _summary(mv), "stages": registry.stages(mv.name)})
        return
    console.print(f"{mv.ref} is now {stage}", highlight=False)


@app.command("demote")
def demote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="model name")],
    stage: Annotated[str, typer.Argument(help="stage to clear, e.g. challenger")],
    as_json: JsonOpt = False,
) -> None:
    """Take a stage off whichever version holds it."""
    from edgeloop_control.registry.refs import check_stage

    registry = _registry(ctx)
    stage = check_stage(stage)
    mv = registry.demote(name, stage)
    if as_json:
        print_json({"stage": stage, "version": _summary(mv) if mv else None})
        return
    if mv is None:
        console.print(f"no version of {name} is {stage}", highlight=False)
    else:
        console.print(f"{mv.ref} is no longer {stage}", highlight=False)


@app.command("diff")
def diff(
    ctx: typer.Context,
    ref_a: Annotated[str, typer.Argument(help="e.g. sensor#champion")],
    ref_b: Annotated[str, typer.Argument(help="e.g. sensor@latest")],
    as_json: JsonOpt = False,
) -> None:
    """Compare two versions: metrics, parameters, other metadata, artifact, lineage."""
    registry = _registry(ctx)
    result = registry.diff(ref_a, ref_b)
    if as_json:
        print_json(result)
        return
    rows = []
    for section in ("metrics", "params", "metadata", "artifact", "lineage"):
        for key, change in result[section].items():
            delta = change.get("delta")
            rows.append(
                [
                    section,
                    key,
                    _full(change["a"]),
                    _full(change["b"]),
                    "" if delta is None else f"{delta:+.4g}",
                ]
            )
    if not rows:
        console.print(f"{result['a']} and {result['b']} record the same metadata")
        return
    console.print(
        table(
            f"{result['a']} -> {result['b']}",
            ["section", "field", "a", "b", "delta"],
            rows,
            wrap=("a", "b"),
        )
    )
    if result["metrics"] and result["metrics_comparable"] is not True:
        err_console.print(f"note: {result['metrics_note']}", highlight=False)


@app.command("verify")
def verify(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="e.g. sensor@v3")],
    as_json: JsonOpt = False,
) -> None:
    """Check a version's artifact against its recorded sha256 and signature."""
    registry = _registry(ctx)
    mv = registry.get(ref)
    data = registry.artifact_bytes(mv)
    if as_json:
        print_json({"ref": mv.ref, "sha256": mv.sha256, "size": len(data), "ok": True})
        return
    console.print(f"{mv.ref}: sha256 and signature OK ({len(data):,} bytes)", highlight=False)


def _version_of(registry: Any, ref: str) -> str:
    """The concrete version a ref names now (so ``promote sensor#challenger champion`` works)."""
    return registry.get(ref).version


def _full(value: Any) -> str:
    """A value as one wrappable line, never shortened: a list of names reads ``a, b, c``
    (each name whole where the line wraps), anything else as JSON."""
    import json

    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value) or "-"
    return json.dumps(value, default=str, sort_keys=True, separators=(", ", ": "))
