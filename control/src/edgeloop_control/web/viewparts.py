"""Small pieces the dashboard's pages share: paging, events about one thing, a model
link, lineage text, and turning collected sections into report input."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.report import history
from edgeloop_control.report.history import Selection
from edgeloop_control.report.markup import Html, esc
from edgeloop_control.web.pages import link, path_part
from edgeloop_control.web.readdb import ReadOnlyDB


def page(request: Request) -> int:
    raw = request.query_params.get("page") or "1"
    return max(1, min(int(raw), 10**6)) if raw.isdigit() else 1


def events(db: ControlDB, *, subject: str, like: str, limit: int) -> list[dict[str, Any]]:
    """Events about one thing, newest first: its subject, or its name in the message."""
    pattern = "%" + like.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return [
        dict(r)
        for r in db.conn.execute(
            "SELECT ts, kind, subject, message FROM events WHERE subject = ? "
            "OR message LIKE ? ESCAPE '\\' ORDER BY ts DESC, id DESC LIMIT ?",
            (subject, pattern, limit),
        )
    ]


def fleet(db: ControlDB, devices: list[str]) -> list[dict[str, Any]]:
    """``history.fleet`` for just these devices (their inventory rows only)."""
    if isinstance(db, ReadOnlyDB):
        with db.scoped(devices):
            return history.fleet(db, Selection(devices=tuple(devices)))
    return history.fleet(db, Selection(devices=tuple(devices)))


def ended(rollout: dict[str, Any]) -> float:
    """Where the timeline stops: when a finished rollout finished, else now (still going)."""
    end = rollout.get("finished_at")
    return float(end) if isinstance(end, int | float) else time.time()


def lineage(
    name: str, mv: Any, meta: dict[str, Any], lineage: dict[str, Any]
) -> list[tuple[str, object]]:
    """Where a version came from: data, training run, parent, cause, registry tag."""
    run = lineage.get("tracking_run_id") or lineage.get("run_id")
    where = lineage.get("tracking_uri") or lineage.get("run_uri")
    parent = lineage.get("parent")
    rows: list[tuple[str, object]] = [
        ("feature view", meta.get("feature_view") or "– (not trained from the feature store)"),
        ("training data", data_text(meta)),
        ("tracking run", f"{run} ({where})" if run and where else run or "– (no run recorded)"),
        ("parent version", model_link(str(parent)) if parent else "–"),
        ("cause", lineage.get("cause") or "–"),
        ("registry tag", Html(f"<code>{esc(mv.tag or '–')}</code>")),
        ("registry commit", Html(f"<code>{esc(mv.commit or '–')}</code>")),
    ]
    known = {"tracking_run_id", "run_id", "tracking_uri", "run_uri", "parent", "cause"}
    rows += [(str(k), plain(v)) for k, v in sorted(lineage.items()) if k not in known]
    return rows


def data_text(meta: dict[str, Any]) -> str:
    parts = []
    if isinstance(meta.get("rows"), int):
        parts.append(f"{meta['rows']:,} rows")
    span = meta.get("training_range")
    if isinstance(span, list) and len(span) == 2:
        parts.append(f"{span[0]} to {span[1]}")
    if meta.get("data_hash"):
        parts.append(f"hash {str(meta['data_hash'])[:16]}")
    return ", ".join(parts) or "–"


def model_link(ref: str) -> Html:
    name, _, version = ref.partition("@")
    if not version:
        return Html(esc(ref))
    return link(f"/models/{path_part(name)}/{path_part(version)}", ref)


def registry_call(fn: Callable[[], Any]) -> Any:
    from edgeloop_control.registry import RegistryError

    try:
        return fn()
    except (RegistryError, ValueError, OSError):
        return None


def plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def report_data(**sections: Any) -> dict[str, Any]:
    """The report's input contract with only the given sections filled in."""
    return {
        "title": "dashboard",
        "generated_at": time.time(),
        "workspace": None,
        "timeline": None,
        "events": [],
        "drift": None,
        "experiments": [],
        "rollouts": [],
        "devices": [],
        "summary": None,
        **sections,
    }
