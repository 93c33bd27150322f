"""The dashboard over HTTP with a real uvicorn server on a workspace built through the real
write paths: every page, security headers, auth (no token, wrong token, CSRF), GET never
mutates, hostile ids escaped, the three actions through the real managers."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from edgeloop_control.fleet.ingest import handle_report, handle_status
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.registry import Registry
from edgeloop_control.web.auth import load_token, read_or_create_token
from edgeloop_control.web.server import HttpServer, parse_listen
from tests.control.fleet_history import LONG_DEVICE, History, _envelope, _status
from tests.control.web_client import (
    Browser,
    copy_workspace,
    hidden,
    register_with_lineage,
    start,
)

TOKEN = "test-operator-token-0123456789"
HOSTILE_DEVICE = '<script>alert("d")</script>'
HOSTILE_FEATURE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def readonly(fleet_history: History) -> Iterator[Browser]:
    """The shared history, served without a token (read-only dashboard)."""
    server = start(fleet_history.ws, None)
    try:
        yield Browser(f"http://{server.listen}")
    finally:
        server.stop()


def _snapshot(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return [(t, conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables]
    finally:
        conn.close()


def test_every_page_renders_from_the_real_history(
    readonly: Browser, fleet_history: History
) -> None:
    before = _snapshot(fleet_history.ws.state_db)
    fleet = readonly.get("/")
    assert fleet.status == 200
    assert "pump-1" in fleet.text and LONG_DEVICE in fleet.text
    assert "sensor@v1" in fleet.text and "data-live" in fleet.text
    device = readonly.get(f"/devices/{quote(LONG_DEVICE, safe='')}")
    assert device.status == 200 and "<svg" in device.text  # its drift charts
    assert "vibration_rms_mm_s" in device.text
    assert readonly.get("/models").text.count("sensor") >= 1
    version = readonly.get("/models/sensor/v2")
    assert version.status == 200
    assert "winner of the A/B test" in version.text  # who/why it was deployed
    assert "registry tag" in version.text and "sensor@v2" in version.text
    drift = readonly.get("/drift")
    assert drift.status == 200 and drift.text.count("<svg") >= 3
    exps = readonly.get("/experiments")
    for exp_id in fleet_history.experiments:
        assert exp_id in exps.text
        one = readonly.get(f"/experiments/{exp_id}")
        assert one.status == 200 and "<svg" in one.text
    outs = readonly.get("/rollouts")
    for rid in fleet_history.rollouts:
        assert rid in outs.text
        one = readonly.get(f"/rollouts/{rid}")
        assert one.status == 200 and "<svg" in one.text
    assert "the test aborts it" in readonly.get(f"/rollouts/{fleet_history.rollouts[1]}").text
    events = readonly.get("/events")
    assert f"history built for {LONG_DEVICE}" in events.text
    # A live fragment is the <main> only.
    fragment = readonly.get("/?fragment=1")
    assert fragment.status == 200 and "<html" not in fragment.text and "pump-1" in fragment.text
    assert _snapshot(fleet_history.ws.state_db) == before  # GET never writes


def test_security_headers_and_no_actions_without_a_token(readonly: Browser) -> None:
    page = readonly.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in page.text  # the only script carries it
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "read-only" in page.text and "<form" not in page.text
    assert "<form" not in readonly.get("/models/sensor/v2").text  # no action buttons
    refused = readonly.post("/models/sensor/v1/promote", {"csrf": "x"})
    assert refused.status == 403 and "read-only" in refused.text


def test_unknown_things_are_404_pages(readonly: Browser) -> None:
    for path in ("/devices/nope", "/models/nope", "/models/sensor/v99", "/experiments/x",
                 "/rollouts/x"):  # fmt: skip
        reply = readonly.get(path)
        assert reply.status == 404, path
        assert "nope" in reply.text or "x" in reply.text
    bad = readonly.get("/drift?since=yesterday-ish")
    assert bad.status == 400 and "not a date/time" in bad.text
    assert readonly.get("/").status == 200  # still serving


def test_non_loopback_requires_a_token() -> None:
    with pytest.raises(ValueError, match="requires an operator token"):
        parse_listen("0.0.0.0:8765")
    assert parse_listen("0.0.0.0:8765", token=True) == ("0.0.0.0", 8765)


def test_token_file_is_generated_0600_and_read_back(tmp_path: Path, fleet_history: History) -> None:
    ws = copy_workspace(fleet_history.ws, tmp_path / "ws")
    config = Path(ws.root) / "edgeloop.toml"
    config.write_text(config.read_text() + '\n[http]\ntoken_file = "http-token"\n')
    from edgeloop_control.infra.workspace import Workspace

    ws = Workspace.open(ws.root)
    token = load_token(ws)
    path = Path(ws.root) / "http-token"
    assert token and path.stat().st_mode & 0o777 == 0o600
    assert read_or_create_token(path) == token == load_token(ws)


@pytest.fixture(scope="module")
def acting(
    fleet_history: History, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Browser, History, HttpServer]]:
    """A private copy of the history, served with a token, with a hostile device in it."""
    ws = copy_workspace(fleet_history.ws, tmp_path_factory.mktemp("acting") / "ws")
    db = ControlDB(ws.control_db)
    try:
        # The daemon refuses such a device id at its boundary (tests/control/
        # test_daemon_poison.py), so the hostile id arrives as rows an older control
        # node (or a hand edit) could have left; a hostile feature name still arrives
        # through ingestion, from a device with a valid id.
        doc = json.loads(db.conn.execute("SELECT doc FROM drift_windows LIMIT 1").fetchone()[0])
        doc["features"][0]["name"] = HOSTILE_FEATURE
        doc.update(variant="sensor@v1", version="v1", t_start=time.time() - 60,
                   t_end=time.time())  # fmt: skip
        payload = {
            "revision": 1,
            "variants": {"sensor@v1": {"name": "sensor", "version": "v1", "role": "serve"}},
            "metrics": {"variants": {}}, "drift": [doc], "concept_drift": {},
            "outbox": {"depth": 1, "dropped": 0}, "process": {"rss_bytes": 1, "cpu_percent": 1},
        }  # fmt: skip
        handle_status(db, "dev-odd-feature", _status("dev-odd-feature", 1, "v1"))
        assert handle_report(db, _envelope("dev-odd-feature", 1, time.time(), payload))
        status = _status(HOSTILE_DEVICE, 1, "v1")
        db.upsert_device(HOSTILE_DEVICE, online=1, last_seen=time.time(), status=status)
        db.conn.execute(
            "INSERT INTO drift_windows(report_id, idx, device, variant, version, start, end, "
            "n, enough_data, dataset_drift, output_drift, drifted, doc) "
            "SELECT 'hostile', idx, ?, variant, version, start, end, n, enough_data, "
            "dataset_drift, output_drift, drifted, doc FROM drift_windows "
            "WHERE device = 'dev-odd-feature'",
            (HOSTILE_DEVICE,),
        )
        db.add_event("note", f"message naming {HOSTILE_FEATURE}", subject=HOSTILE_DEVICE)
    finally:
        db.close()
    register_with_lineage(ws)
    history = History(ws, fleet_history.t0, fleet_history.shift_at, fleet_history.experiments,
                      fleet_history.rollouts, fleet_history.windows)  # fmt: skip
    server = start(ws, TOKEN, broker=ws.broker_url())
    try:
        yield Browser(f"http://{server.listen}"), history, server
    finally:
        server.stop()


def test_hostile_device_id_and_feature_name_are_escaped(
    acting: tuple[Browser, History, HttpServer],
) -> None:
    web, _, _ = acting
    for path in ("/", "/events", f"/devices/{quote(HOSTILE_DEVICE, safe='')}", "/drift?device="
                 + quote(HOSTILE_DEVICE, safe="")):  # fmt: skip
        page = web.get(path)
        assert page.status == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    assert "&lt;script&gt;alert(&quot;d&quot;)&lt;/script&gt;" in web.get("/").text
    assert "message naming &lt;img src=x onerror=alert(1)&gt;" in web.get("/events").text
    device = web.get(f"/devices/{quote(HOSTILE_DEVICE, safe='')}").text
    assert "&lt;img src=x onerror=alert(1)&gt;" in device


def test_a_version_shows_its_lineage(acting: tuple[Browser, History, HttpServer]) -> None:
    web, _, _ = acting
    page = web.get("/models/sensor/v3").text
    for text in ("pumps@4", "12,000 rows", "3c1f9a7e0b5d4e2f", "retrain: drift on vibration_mm_s",
                 'href="/models/sensor/v2"', "sensor@v3.0.0"):  # fmt: skip
        assert text in page, text


def test_actions_need_login_and_the_sessions_csrf_token(
    acting: tuple[Browser, History, HttpServer],
) -> None:
    web, history, server = acting
    db_path = history.ws.state_db
    counters = server.app.state.dashboard.counters.values
    before = _snapshot(db_path)
    anonymous = Browser(web.base)
    assert "operator sign-in" in anonymous.get("/").text
    assert anonymous.post("/models/sensor/v1/promote", {"csrf": "x"}).status == 401
    wrong = Browser(web.base)
    assert wrong.login("not-the-token-at-all").status == 403
    assert counters.get("login_failed", 0) >= 1
    # Login CSRF: a form value that does not match the browser's cookie.
    forged = Browser(web.base)
    forged.get("/login")
    assert forged.post("/login", {"login_csrf": "guess", "user": "m", "token": TOKEN}).status == 403
    alice = Browser(web.base)
    signed = alice.login(TOKEN)
    assert signed.status == 303
    cookie = signed.headers.get("set-cookie", "")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    page = alice.get("/models/sensor/v1")
    csrf = hidden(page.text, "csrf")
    assert alice.post("/models/sensor/v1/promote", {}).status == 403  # no CSRF token
    assert alice.post("/models/sensor/v1/promote", {"csrf": csrf[:-2] + "xx"}).status == 403
    # Another signed-in session's CSRF token is not this session's.
    bob = Browser(web.base)
    bob.login(TOKEN, user="bob")
    assert bob.post("/models/sensor/v1/promote", {"csrf": csrf}).status == 403
    assert counters.get("csrf_refused", 0) >= 4
    assert _snapshot(db_path) == before  # nothing refused changed anything
    metrics = web.get("/metrics").text
    assert 'edgeloop_dashboard_events_total{what="csrf_refused"}' in metrics
    assert 'edgeloop_dashboard_events_total{what="login_failed"}' in metrics
    # GET on an action URL is not an action.
    assert alice.get("/models/sensor/v1/promote").status in (404, 405)


def test_promote_stop_and_abort_call_the_real_managers(
    acting: tuple[Browser, History, HttpServer],
) -> None:
    web, history, _ = acting
    alice = Browser(web.base)
    alice.login(TOKEN, user="alice")
    csrf = hidden(alice.get("/").text, "csrf")
    done = alice.post("/models/sensor/v1/promote", {"csrf": csrf, "reason": "hotfix"})
    assert done.status == 303, done.text
    registry = Registry.for_workspace(history.ws, create=False, sync_remote=False)
    assert registry.stages("sensor").get("champion") == "v1"
    running = history.experiments[1]
    stopped = alice.post(f"/experiments/{running}/stop", {"csrf": csrf, "reason": "bad data"})
    assert stopped.status == 303, stopped.text
    again = alice.post(f"/experiments/{running}/stop", {"csrf": csrf})
    assert again.status == 409 and "only a running or decided" in again.text
    aborted = alice.post(f"/rollouts/{history.rollouts[1]}/abort", {"csrf": csrf})
    assert aborted.status == 409 and "already" in aborted.text  # it was aborted before
    events = alice.get("/events").text
    assert "alice promoted sensor@v1 to champion: hotfix" in events
    assert f"alice stopped experiment {running}" in events
    assert alice.get("/").status == 200  # still serving after a refused action
    page = web.get(f"/experiments/{running}").text
    state = page.split("<dt>state</dt><dd>")[1].split("</dd>")[0]
    assert state != "running", state


def test_sign_out_ends_the_session(acting: tuple[Browser, History, HttpServer]) -> None:
    web, _, _ = acting
    carol = Browser(web.base)
    carol.login(TOKEN, user="carol")
    csrf = hidden(carol.get("/").text, "csrf")
    assert carol.post("/logout", {"csrf": csrf}).status == 303
    assert carol.post("/models/sensor/v1/promote", {"csrf": csrf}).status == 401
