"""The control node's HTTP side: ``/metrics`` for Prometheus, ``/healthz`` and, given the
workspace, the live dashboard (:mod:`edgeloop_control.web.dashboard`).

Reads come from the control database (its own read-only SQLite connection per request,
so it never blocks the daemon's writer). Started by ``edgeloop serve --http``. Every
response carries a strict Content-Security-Policy (scripts only with the response's
nonce), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from edgeloop_agent.wire.exposition import CONTENT_TYPE
from edgeloop_control.infra import sql
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.web.fleetmetrics import FleetMetrics


async def security_headers(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    nonce = getattr(request.state, "nonce", None)
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    # Inline style attributes are how the report's SVG charts colour things; scripts are
    # the dangerous part and run only with this response's nonce.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {script}; style-src 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def create_app(
    db_path: str | Path,
    *,
    ws: Workspace | None = None,
    token: str | None = None,
    broker: str | None = None,
) -> Starlette:
    """``/metrics`` and ``/healthz``; with ``ws`` also the dashboard (actions only when
    ``token`` is set)."""
    fleet = FleetMetrics()

    def connect() -> sql.Connection:
        # Read-only: a scrape can never write to (or lock) the control database.
        return sql.connect(db_path, readonly=True)

    def metrics(request: Request) -> Response:
        conn = connect()
        try:
            body = fleet.render(conn)
        finally:
            conn.close()
        dashboard = getattr(request.app.state, "dashboard", None)
        if dashboard is not None:
            body += dashboard.counters.render()
        return Response(body, media_type=CONTENT_TYPE)

    def healthz(_: Request) -> Response:
        conn = connect()
        try:
            conn.execute("SELECT 1 FROM devices LIMIT 1").fetchall()
        except sql.Error as exc:
            return PlainTextResponse(f"control database unreadable: {exc}\n", status_code=503)
        finally:
            conn.close()
        return PlainTextResponse("ok\n")

    routes = [Route("/metrics", metrics), Route("/healthz", healthz)]
    app = Starlette(
        routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=security_headers)]
    )
    if ws is not None:
        from edgeloop_control.web.dashboard import Dashboard

        dashboard = Dashboard(ws, token, broker)
        app.router.routes.extend(dashboard.routes())
        app.state.dashboard = dashboard
    return app
