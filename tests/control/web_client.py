"""A tiny HTTP client for the dashboard tests (urllib; cookies kept, redirects not followed)."""

from __future__ import annotations

import http.cookiejar
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgeloop_control.infra.mosquitto import free_port
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.web.server import HttpServer
from tests.pgserver import follow_engine


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def request(self, path: str, form: dict[str, str] | None = None) -> Reply:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(self.base + path, data=data)
        try:
            with self.opener.open(req, timeout=30) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read().decode())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers), exc.read().decode())

    def get(self, path: str) -> Reply:
        return self.request(path)

    def post(self, path: str, form: dict[str, str]) -> Reply:
        return self.request(path, form)

    def login(self, token: str, user: str = "alice") -> Reply:
        page = self.get("/login")
        pre = hidden(page.text, "login_csrf")
        return self.post("/login", {"login_csrf": pre, "user": user, "token": token})


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden {name} in the page"
    return match.group(1)


def copy_workspace(src: Workspace, dest: Path) -> Workspace:
    """A private copy of a shared (read-only) workspace, for tests that act on it."""
    shutil.copytree(src.root, dest, symlinks=True)
    follow_engine(dest)
    return Workspace.open(dest)


def register_with_lineage(ws: Workspace) -> str:
    """sensor@v3 as a retraining run registers it: feature view, data, run, parent, cause."""
    from edgeloop_control.registry import Registry
    from tests.control.fleet_history import MODEL_FEATURES
    from tests.integration.models import sensor_model

    registry = Registry.for_workspace(ws, create=False, sync_remote=False)
    mv = registry.register(
        "sensor",
        sensor_model("v3", algo="hgb").data,
        {"algorithm": "hgb", "features": MODEL_FEATURES, "feature_view": "pumps@4",
         "rows": 12000, "training_range": ["2026-11-20T00:00:00Z", "2026-12-01T00:00:00Z"],
         "data_hash": "9f2c4e1ab37d5f08c6e2"},
        lineage={"tracking_run_id": "3c1f9a7e0b5d4e2f", "tracking_uri": "workspace",
                 "parent": "sensor@v2", "cause": "retrain: drift on vibration_mm_s"},
    )  # fmt: skip
    return mv.ref


def start(ws: Workspace, token: str | None, broker: str | None = None) -> HttpServer:
    return HttpServer(
        ws.state_db, f"127.0.0.1:{free_port()}", ws=ws, token=token, broker=broker
    ).start()
