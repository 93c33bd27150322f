"""The control node's HTTP side: ``/metrics`` for Prometheus and ``/healthz``.

Read-only, from the control database (its own SQLite connection per request,
so it never blocks the daemon's writer). Started by ``edgeloop serve --http``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from edgeloop_agent.prometheus import CONTENT_TYPE
from edgeloop_control.web.fleetmetrics import FleetMetrics


def create_app(db_path: Path) -> Starlette:
    fleet = FleetMetrics()

    def connect() -> sqlite3.Connection:
        # Read-only: a scrape can never write to (or lock) the control database.
        return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)

    def metrics(_: Request) -> Response:
        conn = connect()
        try:
            body = fleet.render(conn)
        finally:
            conn.close()
        return Response(body, media_type=CONTENT_TYPE)

    def healthz(_: Request) -> Response:
        conn = connect()
        try:
            conn.execute("SELECT 1 FROM devices LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return PlainTextResponse(f"control database unreadable: {exc}\n", status_code=503)
        finally:
            conn.close()
        return PlainTextResponse("ok\n")

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])
