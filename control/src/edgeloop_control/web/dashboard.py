"""The live dashboard's plumbing: routes, sign-in/out, and the checks around every page
(:mod:`.views`) and every operator action (:mod:`.actions`, POST only).

GET pages read the control database through a read-only connection (never a write, never
the write lock). Actions need a configured token, a signed-in session and that session's
CSRF token; they call the same managers as the CLI and record an event naming the user.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report.markup import esc
from edgeloop_control.web import pages
from edgeloop_control.web.actions import ActionError, Actions
from edgeloop_control.web.auth import LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions, same_secret
from edgeloop_control.web.pages import Viewer
from edgeloop_control.web.readdb import open_readonly
from edgeloop_control.web.views import BadRequest, NotFound, Views

log = logging.getLogger("edgeloop.control.http")

MAX_FORM_BYTES = 16 * 1024


@dataclass
class Counters:
    """What went wrong, for /metrics-style inspection and the tests."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + 1

    def render(self) -> str:
        """``edgeloop_dashboard_events_total{what}`` for /metrics: refusals show up there."""
        from edgeloop_agent.wire.exposition import TextWriter

        out = TextWriter("edgeloop")
        out.metric(
            "dashboard_events_total",
            "counter",
            "Dashboard outcomes: actions, refusals (csrf_refused, login_failed, ...), errors.",
        )
        with self.lock:
            for name, n in sorted(self.values.items()):
                out.sample("dashboard_events_total", {"what": name}, n)
        return out.text()


class Dashboard:
    def __init__(self, ws: Workspace, token: str | None, broker: str | None = None) -> None:
        self.ws = ws
        self.token = token
        self.broker = broker
        self.sessions = Sessions()
        self.counters = Counters()
        self.views = Views(ws)
        self.actions = Actions(ws, broker)

    # -- plumbing ------------------------------------------------------------------

    def routes(self) -> list[Route]:
        get, v, a = ["GET", "HEAD"], self.views, self.actions
        return [
            Route("/", self.page(v.fleet_page), methods=get),
            Route("/devices/{device:path}", self.page(v.device_page), methods=get),
            Route("/models", self.page(v.models_page), methods=get),
            Route("/models/{name}", self.page(v.model_page), methods=get),
            Route("/models/{name}/{version}", self.page(v.version_page), methods=get),
            Route("/models/{name}/{version}/promote", self.action(a.promote), methods=["POST"]),
            Route("/drift", self.page(v.drift_page), methods=get),
            Route("/experiments", self.page(v.experiments_page), methods=get),
            Route("/experiments/{exp_id}", self.page(v.experiment_page), methods=get),
            Route("/experiments/{exp_id}/stop", self.action(a.stop), methods=["POST"]),
            Route("/rollouts", self.page(v.rollouts_page), methods=get),
            Route("/rollouts/{rid}", self.page(v.rollout_page), methods=get),
            Route("/rollouts/{rid}/abort", self.action(a.abort), methods=["POST"]),
            Route("/events", self.page(v.events_page), methods=get),
            Route("/login", self.login_form, methods=get),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.action(self.logout), methods=["POST"]),
        ]

    def viewer(self, request: Request) -> tuple[Viewer, Session | None]:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return Viewer(actions_enabled=self.token is not None), None
        return Viewer(session.user, session.csrf, self.token is not None), session

    def page(
        self, body: Callable[[Request, ControlDB, Viewer], tuple[str, str, str, bool]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page body: read-only db, layout, fragment mode, errors as pages."""

        async def endpoint(request: Request) -> Response:
            viewer, _ = self.viewer(request)
            nonce = secrets.token_urlsafe(16)
            request.state.nonce = nonce
            try:
                db = await run_in_threadpool(open_readonly, self.ws.control_db)
            except Exception as exc:  # sql.Error, missing file
                self.counters.bump("db_unreadable")
                return self.problem(viewer, nonce, 503, f"control database unreadable: {exc}")
            try:
                # Pages read SQLite and git: off the event loop, so a slow page never
                # holds up /metrics scrapes or other browsers.
                title, here, body_html, live = await run_in_threadpool(body, request, db, viewer)
            except NotFound as exc:
                self.counters.bump("not_found")
                return self.problem(viewer, nonce, 404, str(exc))
            except BadRequest as exc:
                self.counters.bump("bad_request")
                return self.problem(viewer, nonce, 400, str(exc))
            except Exception as exc:  # a damaged record costs one page, never the server
                self.counters.bump("page_errors")
                log.exception("dashboard page %s failed", request.url.path)
                return self.problem(viewer, nonce, 500, f"this page could not be built: {exc}")
            finally:
                db.conn.close()
            message = request.query_params.get("done")
            body_html = pages.notice(message) + body_html if message else body_html
            if request.query_params.get("fragment") == "1":
                return HTMLResponse(body_html)
            html = pages.layout(title, body_html, viewer=viewer, nonce=nonce, here=here, live=live)
            return HTMLResponse(html)

        return endpoint

    def problem(self, viewer: Viewer, nonce: str, status: int, message: str) -> HTMLResponse:
        body = f"<h1>{status}</h1>" + pages.notice(message, problem=True)
        return HTMLResponse(
            pages.layout(str(status), body, viewer=viewer, nonce=nonce), status_code=status
        )

    def action(
        self, do: Callable[[Request, Session, dict[str, str]], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap an operator action: token configured, session, CSRF, then ``do``."""

        async def endpoint(request: Request) -> Response:
            nonce = secrets.token_urlsafe(16)
            request.state.nonce = nonce
            viewer, session = self.viewer(request)
            if self.token is None:
                self.counters.bump("action_refused")
                return self.problem(
                    viewer, nonce, 403, "the dashboard is read-only: no [http] token is configured"
                )
            form = await read_form(request)
            if session is None:
                self.counters.bump("action_refused")
                return self.problem(viewer, nonce, 401, "sign in first (/login)")
            if not same_secret(form.get("csrf"), session.csrf):
                self.counters.bump("csrf_refused")
                return self.problem(
                    viewer, nonce, 403, "missing or wrong CSRF token; reload the page and try again"
                )
            try:
                target = await run_in_threadpool(do, request, session, form)
            except ActionError as exc:
                self.counters.bump("action_failed")
                return self.problem(viewer, nonce, 409, str(exc))
            self.counters.bump("actions")
            return RedirectResponse(target, status_code=303)

        return endpoint

    # -- sign-in ---------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        request.state.nonce = nonce
        viewer, _ = self.viewer(request)
        if self.token is None:
            body: str = pages.notice(
                "This dashboard is read-only: the workspace configures no "
                "[http] token, so there is nothing to sign in to."
            )
            return HTMLResponse(pages.layout("Sign in", body, viewer=viewer, nonce=nonce))
        # Login CSRF: the form's hidden value must match this cookie (double submit), so
        # another site cannot sign a browser in to an account of its choosing.
        pre = secrets.token_urlsafe(24)
        body = (
            "<h1>Operator sign-in</h1>"
            '<form class="action" method="post" action="/login">'
            f'<input type="hidden" name="login_csrf" value="{esc(pre)}">'
            '<p><label>your name (recorded with every action) <input type="text" name="user" '
            'maxlength="64" required></label></p>'
            '<p><label>token <input type="password" name="token" autocomplete="off" '
            "required></label></p><p><button>sign in</button></p></form>"
            '<p class="lead">The token is <code>[http] token</code> in edgeloop.toml, or the '
            "file <code>[http] token_file</code> names (see docs/operations.md).</p>"
        )
        response = HTMLResponse(pages.layout("Sign in", body, viewer=viewer, nonce=nonce))
        response.set_cookie(LOGIN_COOKIE, pre, httponly=True, samesite="strict", max_age=600)
        return response

    async def login(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        request.state.nonce = nonce
        viewer, _ = self.viewer(request)
        if self.token is None:
            self.counters.bump("action_refused")
            return self.problem(
                viewer, nonce, 403, "the dashboard is read-only: no [http] token is configured"
            )
        form = await read_form(request)
        pre = request.cookies.get(LOGIN_COOKIE)
        if not pre or not same_secret(form.get("login_csrf"), pre):
            self.counters.bump("csrf_refused")
            return self.problem(
                viewer, nonce, 403, "missing or wrong sign-in form token; open /login again"
            )
        if not same_secret(form.get("token"), self.token):
            self.counters.bump("login_failed")
            log.warning("dashboard: failed sign-in from %s", request.client and request.client.host)
            return self.problem(viewer, nonce, 403, "wrong token")
        sid, session = self.sessions.create(form.get("user") or "")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            # Behind a TLS reverse proxy (X-Forwarded-Proto from loopback, which uvicorn
            # trusts) the cookie is never sent over plain HTTP.
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
            max_age=int(self.sessions.ttl_s),
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE)
        log.info("dashboard: %s signed in", session.user)
        return response

    def logout(self, request: Request, session: Session, form: dict[str, str]) -> str:
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        return "/"


async def read_form(request: Request) -> dict[str, str]:
    """A small url-encoded form; anything else (or oversized) reads as empty."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return {}
