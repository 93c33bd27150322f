"""``edgeloop drift``: PSI, p-value and the verdict per feature for recent windows.

The p-value is the one that decided the feature, adjusted in the window's one family: KS
for numeric features, chi-square for categorical ones, KS of the PCA reconstruction error
for the multivariate row."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

import typer

from edgeloop_control.cli.common import print_json, state

MODEL_OUTPUT = "(model output)"


def register(app: typer.Typer) -> None:
    app.command("drift")(drift)


def drift(
    ctx: typer.Context,
    device: Annotated[
        list[str] | None, typer.Option("--device", "-d", help="only this device; repeatable")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="only this model (NAME or NAME@vN); repeatable"),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="windows ending after this: ISO date/time or 2h, 7d ago")
    ] = None,
    until: Annotated[str | None, typer.Option(help="windows ending before this")] = None,
    windows: Annotated[
        int, typer.Option("--windows", "-n", min=1, help="newest windows per device and variant")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Per-feature drift of recent windows: PSI, KS p-value and the agent's verdict."""
    from edgeloop_control.cli.filters import selection
    from edgeloop_control.infra.db import ControlDB
    from edgeloop_control.report import history

    ws = state(ctx).workspace
    sel = selection(since, until, device, model)
    db = ControlDB(ws.control_db)
    try:
        found = history.drift_windows(db, sel, last=windows)
        note = history.aggregation_note(db, sel) if _any_hourly(found) else None
    finally:
        db.close()
    if as_json:
        print_json([_json_window(w) for w in found])
        return
    from rich.console import Console

    from edgeloop_control.cli.layout import safe_text

    # Made here, not at import: the width follows COLUMNS at the time of the call.
    console = Console(highlight=False)
    print_drift(console, found, sel.describe())
    if note:
        console.print(safe_text(note), soft_wrap=True)


def _any_hourly(found: list[dict[str, Any]]) -> bool:
    return any(w.get("aggregated") for w in found)


def _json_window(w: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: w[k] for k in ("device", "variant", "version", "start", "end", "n")},
        "enough_data": w["enough_data"],
        "dataset_drift": w["dataset_drift"],
        "output_drift": w["output_drift"],
        "verdict": _window_verdict(w),
        "thresholds": w["thresholds"],
        "features": [
            {
                "name": str(f["name"]),
                "kind": str(f.get("kind") or "numeric"),
                "psi": f.get("psi"),
                "chi2_p": f.get("chi2_p"),
                "chi2_p_adjusted": f.get("chi2_p_adjusted"),
                "ks_p": f.get("ks_p"),
                "ks_p_adjusted": f.get("ks_p_adjusted"),
                "drift": bool(f.get("drift")),
                "reasons": list(f.get("reasons") or []),
                "verdict": _verdict(f, w["enough_data"], _least(w)),
            }
            for f in w["features"]
        ],
        "output": w["output"],
        "multivariate": w.get("multivariate"),
        "estimated": w.get("estimated"),
        **(
            {"aggregated": "hourly", "windows": w["windows"], "flagged": w["flagged"]}
            if w.get("aggregated")
            else {}
        ),
    }


def _verdict(feature: dict[str, Any], enough_data: bool, least: int | None = None) -> str:
    if feature.get("drift"):
        reasons = ", ".join(str(r) for r in feature.get("reasons") or [])
        return f"drift ({reasons})" if reasons else "drift"
    if not enough_data:
        return "not judged (too few rows)"
    # The agent judges no feature on fewer than min_samples non-missing values: a
    # feature with missing values can go unjudged in a window that has enough rows.
    # "ok" there hid a debt ratio multiplied by 100 (PSI 7.4).
    n = feature.get("n")
    if least is not None and isinstance(n, int) and n < least:
        return f"not judged ({n} values < {least})"
    return "ok"


def _least(w: dict[str, Any]) -> int | None:
    least = (w.get("thresholds") or {}).get("min_samples")
    return least if isinstance(least, int) else None


def _window_verdict(w: dict[str, Any]) -> str:
    if not w["enough_data"]:
        return "too few rows to judge"
    unjudged = [
        str(f["name"])
        for f in w["features"]
        if _verdict(f, True, _least(w)).startswith("not judged")
    ]
    tail = f"; not judged: {', '.join(unjudged)}" if unjudged else ""
    if w["dataset_drift"]:
        drifted = [str(f["name"]) for f in w["features"] if f.get("drift")]
        multi = w.get("multivariate") or {}
        if multi.get("drift"):
            drifted.append(str(multi.get("name") or "multivariate"))
        return ("DATASET DRIFT: " + ", ".join(drifted) if drifted else "DATASET DRIFT") + tail
    return "no drift" + tail


def estimated_text(estimated: Any) -> str:
    """'estimated accuracy 0.912 (training 0.930), ROC AUC ...' from a window's estimate."""
    if not isinstance(estimated, dict):
        return ""
    metric = str(estimated.get("metric") or "metric")
    text = f"estimated {metric} {_num(estimated.get('value'), '.3f')}"
    if estimated.get("reference") is not None:
        text += f" (training {_num(estimated.get('reference'), '.3f')})"
    auc = estimated.get("roc_auc")
    if isinstance(auc, dict) and auc.get("value") is not None:
        text += f", ROC AUC {_num(auc.get('value'), '.3f')}"
        if auc.get("reference") is not None:
            text += f" (training {_num(auc.get('reference'), '.3f')})"
    return text + ", no labels"


def _num(value: Any, fmt: str) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return format(value, fmt) if ok else "-"


def _p(value: Any) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        return "-"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def print_drift(console: Any, found: list[dict[str, Any]], scope: str) -> None:
    """One block per window, newest windows of each device/variant: a heading line with
    the window's verdict, then a feature table (or vertical rows when it would not fit)."""
    from rich.text import Text

    from edgeloop_control.cli.layout import print_rows, safe_text
    from edgeloop_control.report import history

    if not found:
        console.print(
            safe_text(f"no drift windows ({scope}); agents report them with their telemetry"),
            soft_wrap=True,
        )
        return
    streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for w in found:
        streams.setdefault((w["device"], w["variant"]), []).append(w)
    for (device, variant), ws in sorted(streams.items()):
        for w in ws:
            verdict = _window_verdict(w)
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(w["end"]))
            what = f"window ending {when}"
            if w.get("aggregated"):
                what = (
                    f"hour ending {when}: {w['windows']} windows aggregated, "
                    f"{w['flagged']} flagged, mean PSI, smallest p"
                )
            head = safe_text(f"{device} · {variant} · {what} · n={w['n']:,} · ")
            head.append(safe_text(verdict, "bold red" if w["dataset_drift"] else "green"))
            console.print(head, soft_wrap=True)
            if w.get("estimated"):
                console.print(safe_text("  " + estimated_text(w["estimated"])), soft_wrap=True)
            rows: list[list[Any]] = []
            multi = w.get("multivariate")
            judged = [
                *w["features"],
                *([multi] if multi else []),
                *([w["output"]] if w["output"] else []),
            ]
            for f in judged:
                is_output = f is w["output"]
                text = _verdict(f, w["enough_data"], _least(w))
                rows.append(
                    [
                        MODEL_OUTPUT if is_output else _label(f),
                        _num(f.get("psi"), ".3f"),
                        _p(history.feature_p(f)),
                        Text(text, style="red" if f.get("drift") else ""),
                    ]
                )
            print_rows(console, None, ["feature", "PSI", "p (adj.)", "verdict"], rows)


def _label(f: dict[str, Any]) -> str:
    return f"{f['name']} (categorical)" if f.get("kind") == "categorical" else str(f["name"])
