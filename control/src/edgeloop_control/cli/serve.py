"""``edgeloop serve``: run the control daemon in the foreground."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from edgeloop_control.cli.common import exit_code, fail, state


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    tick: Annotated[float, typer.Option(help="seconds between policy evaluations")] = 1.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="serve the live dashboard, /metrics (Prometheus) and /healthz, e.g. "
            "127.0.0.1:8765 (default: off); beyond loopback only with an [http] token",
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker",
            metavar="NAME",
            help="run as one of several workers of this workspace: share the ingest with "
            "the others (MQTT 5 shared subscriptions) and run the policies only while "
            "holding the lease (docs/scale.md); each worker needs its own name",
        ),
    ] = None,
    lease: Annotated[
        float,
        typer.Option(
            help="seconds a silent worker keeps the policies lease before another takes it",
            min=2.0,
        ),
    ] = 15.0,
) -> None:
    """Ingest fleet telemetry, keep the inventory, run retraining/A-B/rollout policies."""
    from edgeloop_control.daemon.build import build_daemon
    from edgeloop_control.infra.logs import setup_logging
    from edgeloop_control.infra.sql import redacted

    setup_logging(log_level)
    st = state(ctx)
    try:
        daemon = build_daemon(st.workspace, st.broker, tick_s=tick, worker=worker, lease_s=lease)
    except ValueError as exc:  # a bad [retrain]/[experiment]/[rollout] section
        fail(f"cannot start the control daemon: {exc}", exit_code(exc))
    server = None
    if http:
        from edgeloop_control.infra.workspace import WorkspaceError
        from edgeloop_control.web.auth import load_token
        from edgeloop_control.web.server import HttpServer

        try:
            token = load_token(st.workspace)
            server = HttpServer(
                st.workspace.control_db, http, ws=st.workspace, token=token, broker=st.broker
            ).start()
        except (ValueError, OSError, WorkspaceError) as exc:
            fail(f"cannot start the HTTP server: {exc}", exit_code(exc))
    # The address, not the URL: the URL may carry the broker password.
    logging.getLogger("edgeloop.control").info(
        "control daemon%s for %s on %s (control database %s)",
        f" worker {worker}" if worker else "",
        st.workspace.root,
        daemon.address,
        redacted(st.workspace.control_db),
    )
    try:
        code = daemon.run()
    finally:
        if server is not None:
            server.stop()
    sys.exit(code)
