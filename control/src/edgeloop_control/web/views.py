"""The dashboard's pages: fleet -> device -> model version -> drift, experiments, rollouts,
events. Each takes the request and a read-only database and returns (title, nav entry,
body HTML, live?); :class:`~edgeloop_control.web.dashboard.Dashboard` wraps them in the
layout. Reads go through :mod:`edgeloop_control.report.history` and the report's sections.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from edgeloop_control.errors import EdgeloopError
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report import history
from edgeloop_control.report.collect import drift_section, experiment_section, rollout_section
from edgeloop_control.report.history import Selection
from edgeloop_control.report.markup import Html, empty, esc, table
from edgeloop_control.report.sections.drift import render_drift
from edgeloop_control.report.sections.experiment import render_experiments
from edgeloop_control.report.sections.rollout import render_rollouts
from edgeloop_control.report.validate import parse_report
from edgeloop_control.web import pages, viewparts
from edgeloop_control.web.pages import Viewer, link, path_part

PAGE_ROWS = 200
# Drift charts per stream: the newest windows only, so a year of history costs the same.
DRIFT_WINDOWS = 60


class NotFound(EdgeloopError, LookupError):
    pass


class BadRequest(EdgeloopError, ValueError):
    pass


class Views:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def fleet_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        page = viewparts.page(request)
        names = [
            r[0]
            for r in db.conn.execute(
                "SELECT device FROM devices UNION SELECT device FROM desired ORDER BY 1 "
                "LIMIT ? OFFSET ?",
                (PAGE_ROWS + 1, (page - 1) * PAGE_ROWS),
            )
        ]
        total, online = db.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(online), 0) FROM devices"
        ).fetchone()
        shown = names[:PAGE_ROWS]
        rows = viewparts.fleet(db, shown) if shown else []
        clk = pages.clock()
        body = (
            "<h1>Fleet</h1>"
            f'<p class="facts">{total:,} devices, {online:,} online. '
            f'<span class="live">updated {esc(clk.utc(time.time()))} UTC</span></p>'
            + pages.fleet_table(rows, clk)
            + pages.pager("/", {}, page, len(names) > PAGE_ROWS)
        )
        return "Fleet", "/", body, True

    def device_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        device = request.path_params["device"]
        rows = viewparts.fleet(db, [device])
        if not rows:
            raise NotFound(f"no device {device!r} in the inventory")
        d, clk = rows[0], pages.clock()
        served = [m.strip() for m in (d["serving"] or "").split(",") if m.strip()]
        models = [viewparts.model_link(m.split(" ")[0]) for m in served]
        facts = pages.kv(
            [
                ("status", "online" if d["online"] else "offline"),
                ("serving", Html(", ".join(models)) if models else "–"),
                ("desired", d["desired"] or "–"),
                (
                    "desired / reported revision",
                    f"{d['desired_revision']} / {d['reported_revision']}",
                ),
                ("drift", d["drift"] or "none flagged"),
                ("requests / errors", f"{d['requests'] or 0:,} / {d['errors'] or 0:,}"),
                ("p99 latency ms", d["p99_ms"] if d["p99_ms"] is not None else "–"),
                ("RSS MB", d["rss_mb"] if d["rss_mb"] is not None else "–"),
                ("outbox depth", d["outbox_depth"] if d["outbox_depth"] is not None else "–"),
                ("last seen", clk.utc(d["last_seen"]) if d["last_seen"] else "–"),
            ]
        )
        windows = history.drift_windows(db, Selection(devices=(device,)), last=DRIFT_WINDOWS)
        drift = self._with_note(
            db, windows, self._drift_html(windows, clk, f"no drift windows from {device}")
        )
        events = viewparts.events(db, subject=device, like=device, limit=50)
        body = (
            f"<h1>Device <code>{esc(device)}</code></h1>{facts}{drift}"
            f"<h2>Events</h2>{pages.events_table(events, clk)}"
        )
        return f"Device {device}", "/", body, True

    def models_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        registry = self._registry()
        rows = []
        for name in registry.names() if registry is not None else []:
            stages = registry.stages(name)
            versions = registry.list(name)
            rows.append(
                [
                    link(f"/models/{path_part(name)}", name),
                    len(versions),
                    ", ".join(f"{s}: {v}" for s, v in sorted(stages.items())) or "–",
                ]
            )
        body = "<h1>Models</h1>" + (
            table(["model", "versions", "stages"], rows, numeric=[1])
            if rows
            else empty("the registry holds no model")
        )
        return "Models", "/models", body, False

    def model_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        name = request.path_params["name"]
        registry = self._registry()
        versions = viewparts.registry_call(lambda: registry.list(name)) if registry else []
        if not versions:
            raise NotFound(f"no model {name!r} in the registry")
        rows = [
            [
                link(f"/models/{path_part(name)}/{path_part(v.version)}", v.ref),
                v.created_at,
                ", ".join(v.stages) or "–",
                str(v.metadata.get("algorithm") or "–"),
                v.sha256[:12],
            ]
            for v in versions
        ]
        body = f"<h1>Model <code>{esc(name)}</code></h1>" + table(
            ["version", "registered (UTC)", "stages", "algorithm", "sha256"], rows
        )
        return f"Model {name}", "/models", body, False

    def version_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        name, version = request.path_params["name"], request.path_params["version"]
        registry = self._registry()
        mv = (
            viewparts.registry_call(lambda: registry.get(f"{name}@{version}")) if registry else None
        )
        if mv is None:
            raise NotFound(f"no version {name}@{version} in the registry")
        lineage = mv.lineage or {}
        meta = mv.metadata
        facts = pages.kv(
            [
                ("stages", ", ".join(mv.stages) or "–"),
                ("registered", mv.created_at),
                ("sha256", Html(f"<code>{esc(mv.sha256)}</code>")),
                ("size", f"{mv.size:,} bytes"),
                ("signing key", mv.key_id),
            ]
        )
        lineage_html = pages.kv(viewparts.lineage(name, mv, meta, lineage))
        metadata = pages.kv([(str(k), viewparts.plain(v)) for k, v in sorted(mv.metadata.items())])
        rollouts = [
            r for r in history.rollouts(self.ws, db, Selection()) if r.get("model") == mv.ref
        ]
        clk = pages.clock()
        deploy_rows = [
            [
                link(f"/rollouts/{path_part(str(r['id']))}", r["id"]),
                pages.state_badge(str(r["state"])),
                r.get("reason") or "–",
                clk.utc(r["created_at"]) if isinstance(r.get("created_at"), int | float) else "–",
            ]
            for r in rollouts
        ]
        deploys = (
            table(["rollout", "state", "why", "started (UTC)"], deploy_rows)
            if deploy_rows
            else empty("never rolled out")
        )
        events = viewparts.events(db, subject=mv.ref, like=mv.ref, limit=100)
        body = (
            f"<h1>{esc(mv.ref)}</h1>"
            + pages.action_form(
                viewer,
                f"/models/{path_part(name)}/{path_part(mv.version)}/promote",
                f"promote {mv.ref} to champion",
            )
            + facts
            + "<h2>Lineage</h2>"
            + lineage_html
            + "<h2>Deployments (who and why)</h2>"
            + deploys
            + "<h2>Metadata</h2>"
            + metadata
            + "<h2>Events</h2>"
            + pages.events_table(events, clk)
        )
        return mv.ref, "/models", body, False

    @staticmethod
    def _with_note(db: ControlDB, windows: list[dict[str, Any]], charts: Html) -> Html:
        """Charts with retention's note in front when some points are hourly aggregates."""
        if not any(w.get("aggregated") for w in windows):
            return charts
        note = history.aggregation_note(db, Selection())
        return Html((f"<p>{esc(note)}.</p>" if note else "") + charts)

    def drift_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        since_text = request.query_params.get("since") or "7d"
        try:
            since = history.parse_when(since_text, option="since")
        except history.HistoryError as exc:
            raise BadRequest(str(exc)) from None
        hourly = "drift_hourly" if history.has_table(db, "drift_hourly") else "drift_windows"
        devices = [
            r[0]
            for r in db.conn.execute(
                # Hours retention folded count too (their dataset_drift is a count).
                "SELECT device, MAX(flagged) FROM (SELECT device, "
                "CASE WHEN dataset_drift > 0 THEN 1 ELSE 0 END AS flagged FROM drift_windows "
                "WHERE end >= ? UNION ALL SELECT device, CASE WHEN dataset_drift > 0 THEN 1 "
                f"ELSE 0 END FROM {hourly} WHERE end >= ?) AS flagged_windows "
                "GROUP BY device ORDER BY MAX(flagged) DESC, device LIMIT ?",
                (since, since, PAGE_ROWS),
            )
        ]
        device = request.query_params.get("device") or (devices[0] if devices else None)
        picker = " ".join(
            (
                f"<strong>{esc(d)}</strong>"
                if d == device
                else link("/drift?" + urlencode({"device": d, "since": since_text}), d)
            )
            for d in devices
        )
        clk = pages.clock()
        if device is None:
            charts = empty(f"no drift windows since {since_text}")
        else:
            windows = history.drift_windows(
                db, Selection(since=since, devices=(device,)), last=DRIFT_WINDOWS
            )
            charts = self._with_note(
                db, windows, self._drift_html(windows, clk, f"no drift windows from {device}")
            )
        body = (
            f'<h1>Drift</h1><p class="facts">Devices with drift windows since {esc(since_text)}'
            f" (flagged first): {picker or '–'}</p>"
            + (
                f"<p>Showing <code>{esc(device)}</code>, newest {DRIFT_WINDOWS} windows per "
                "model variant.</p>"
                if device
                else ""
            )
            + charts
        )
        return "Drift", "/drift", body, False

    def experiments_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        exps = history.experiments(self.ws, db, Selection())
        rows = [
            [
                link(f"/experiments/{path_part(str(e['id']))}", e["id"]),
                pages.state_badge(str(e["state"])),
                e.get("champion"),
                e.get("challenger"),
                ", ".join(e.get("devices") or []),
                (e.get("decision") or {}).get("action") or "–",
            ]
            for e in list(reversed(exps))[:PAGE_ROWS]
        ]
        body = "<h1>A/B experiments</h1>" + (
            table(["experiment", "state", "champion", "challenger", "devices", "decision"], rows)
            if rows
            else empty("no experiment ran")
        )
        return "Experiments", "/experiments", body, True

    def experiment_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        exp_id = request.path_params["exp_id"]
        found = [e for e in history.experiments(self.ws, db, Selection()) if str(e["id"]) == exp_id]
        if not found:
            raise NotFound(f"no experiment {exp_id!r}")
        exp = found[0]
        data = parse_report(viewparts.report_data(experiments=[experiment_section(exp)]))
        action = ""
        if exp.get("state") in ("running", "decided"):
            action = pages.action_form(
                viewer,
                f"/experiments/{path_part(exp_id)}/stop",
                "stop the experiment (keep the champion)",
            )
        body = (
            f"<h1>Experiment <code>{esc(exp_id)}</code></h1>{action}"
            + pages.kv(
                [
                    ("devices", ", ".join(exp.get("devices") or []) or "–"),
                    ("state", str(exp.get("state"))),
                ]
            )
            + render_experiments(data.experiments, pages.clock())
        )
        return f"Experiment {exp_id}", "/experiments", body, True

    def rollouts_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        outs = history.rollouts(self.ws, db, Selection())
        clk = pages.clock()
        rows = [
            [
                link(f"/rollouts/{path_part(str(r['id']))}", r["id"]),
                r.get("model"),
                pages.state_badge(str(r["state"])),
                r.get("reason") or "–",
                f"{r.get('devices_loaded', 0)}/{r.get('devices_total', 0)}",
                clk.utc(r["created_at"]) if isinstance(r.get("created_at"), int | float) else "–",
            ]
            for r in list(reversed(outs))[:PAGE_ROWS]
        ]
        body = "<h1>Rollouts</h1>" + (
            table(["rollout", "model", "state", "why", "devices loaded", "started (UTC)"], rows)
            if rows
            else empty("no rollout ran")
        )
        return "Rollouts", "/rollouts", body, True

    def rollout_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        rid = request.path_params["rid"]
        found = [r for r in history.rollouts(self.ws, db, Selection()) if str(r["id"]) == rid]
        if not found:
            raise NotFound(f"no rollout {rid!r}")
        r = found[0]
        events = viewparts.events(db, subject=rid, like=rid, limit=PAGE_ROWS)
        data = parse_report(
            viewparts.report_data(
                rollouts=[rollout_section(r)],
                events=[
                    {
                        "t": e["ts"],
                        "kind": e["kind"],
                        "subject": e["subject"],
                        "message": e["message"],
                    }
                    for e in events
                ],
            )
        )
        action = ""
        if r.get("state") in ("running", "pending"):
            action = pages.action_form(
                viewer, f"/rollouts/{path_part(rid)}/abort", "abort and roll back"
            )
        clk = pages.clock()
        body = (
            f"<h1>Rollout <code>{esc(rid)}</code></h1>{action}"
            + pages.kv(
                [
                    ("model", str(r.get("model"))),
                    ("why", r.get("reason") or "–"),
                    ("failure", r.get("failure") or "–"),
                ]
            )
            + render_rollouts(data.rollouts, data.events, viewparts.ended(r), clk)
            + "<h2>Events</h2>"
            + pages.events_table(events, clk)
        )
        return f"Rollout {rid}", "/rollouts", body, True

    def events_page(
        self, request: Request, db: ControlDB, viewer: Viewer
    ) -> tuple[str, str, str, bool]:
        page = viewparts.page(request)
        rows = [
            dict(r)
            for r in db.conn.execute(
                "SELECT ts, kind, subject, message FROM events ORDER BY ts DESC, id DESC "
                "LIMIT ? OFFSET ?",
                (PAGE_ROWS + 1, (page - 1) * PAGE_ROWS),
            )
        ]
        body = (
            '<h1>Events</h1><p class="facts">Newest first.</p>'
            + pages.events_table(rows[:PAGE_ROWS], pages.clock())
            + pages.pager("/events", {}, page, len(rows) > PAGE_ROWS)
        )
        return "Events", "/events", body, True

    # -- helpers -------------------------------------------------------------------

    def _registry(self) -> Any:
        from edgeloop_control.registry import Registry, RegistryError

        try:
            return Registry.for_workspace(self.ws, create=False, sync_remote=False)
        except (RegistryError, OSError):
            return None

    def _drift_html(self, windows: list[dict[str, Any]], clk: Any, why_empty: str) -> Html:
        section = drift_section(self.ws, windows)
        data = parse_report(viewparts.report_data(drift=section))
        return render_drift(data.drift, clk, why_empty=why_empty)
