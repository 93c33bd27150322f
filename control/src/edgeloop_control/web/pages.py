"""The dashboard's HTML: one layout, and the bodies of its pages.

Every value that came from a device, the registry or an operator goes through the report's
:func:`~edgeloop_control.report.markup.esc` (or a :class:`Html` fragment built from escaped
parts); the charts are the report's own sections. Pages are complete without JavaScript;
the one inline script (allowed by a per-response CSP nonce) only re-fetches the page's
``<main>`` every few seconds so a page left open stays current.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from edgeloop_control.report.markup import Html, badge, count, empty, esc, num, table
from edgeloop_control.report.palette import tone
from edgeloop_control.report.style import stylesheet
from edgeloop_control.report.timefmt import Clock

POLL_MS = 5000
NAV = (
    ("/", "Fleet"),
    ("/models", "Models"),
    ("/drift", "Drift"),
    ("/experiments", "Experiments"),
    ("/rollouts", "Rollouts"),
    ("/events", "Events"),
)

_EXTRA_CSS = """
header.bar { background: #1d2127; color: #fff; }
header.bar .in { max-width: 1240px; margin: 0 auto; padding: 10px 28px; display: flex;
  gap: 18px; align-items: center; flex-wrap: wrap; }
header.bar a { color: #cfe3f7; text-decoration: none; }
header.bar a.here { color: #fff; font-weight: 600; border-bottom: 2px solid #fff; }
header.bar .who { margin-left: auto; color: #aab3bd; }
header.bar form { display: inline; }
main a { color: var(--accent); }
.pager { margin: 8px 0; color: var(--muted); }
.pager a { margin: 0 6px; }
form.action { display: inline-block; margin: 6px 12px 6px 0; padding: 8px 10px;
  border: 1px solid var(--line); border-radius: 4px; background: var(--panel); }
form.action input[type=text] { width: 260px; }
button { cursor: pointer; }
.notice { padding: 8px 12px; border-radius: 4px; background: #e8f3e8; }
.problem { padding: 8px 12px; border-radius: 4px; background: #fbe3e0; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
.live { color: var(--muted); font-size: 12px; }
"""

# Polls only while the tab is visible; swaps in the server's fresh <main>. A failed fetch
# (server restarting) just waits for the next tick. No framework, no build step.
_POLL_JS = """
(function () {
  var main = document.querySelector('main[data-live]');
  if (!main) return;
  function busy() {
    // Never swap a form out from under an operator who is filling it in.
    var a = document.activeElement;
    if (a && main.contains(a) && a.closest('form')) return true;
    var typed = main.querySelectorAll('form input[type=text]');
    for (var i = 0; i < typed.length; i++) { if (typed[i].value) return true; }
    return false;
  }
  setInterval(function () {
    if (document.hidden || busy()) return;
    var url = new URL(window.location.href);
    url.searchParams.set('fragment', '1');
    fetch(url, {credentials: 'same-origin'}).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && !busy()) { main.innerHTML = html; }
    }).catch(function () {});
  }, %d);
})();
"""


@dataclass(frozen=True)
class Viewer:
    """Who is looking: None for an anonymous reader; the CSRF token goes into every form."""

    user: str | None = None
    csrf: str | None = None
    actions_enabled: bool = False  # a token is configured

    @property
    def can_act(self) -> bool:
        return self.actions_enabled and self.user is not None and self.csrf is not None


def clock(now: float | None = None) -> Clock:
    """A dashboard always shows UTC dates and times (a live page has no natural origin)."""
    now = time.time() if now is None else now
    return Clock(now - 2 * 86400, now)


def link(href: str, text: object) -> Html:
    return Html(f'<a href="{esc(href)}">{esc(text)}</a>')


def path_part(value: str) -> str:
    """A device id or model name as one URL path segment (``/`` and ``?`` included)."""
    return quote(value, safe="")


def device_link(device: str) -> Html:
    return link(f"/devices/{path_part(device)}", device)


def layout(
    title: str, body: str, *, viewer: Viewer, nonce: str, here: str = "", live: bool = False
) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=here" if href == here else ""}>{esc(label)}</a>'
        for href, label in NAV
    )
    if viewer.can_act:
        who = (
            f'<span class="who">signed in as {esc(viewer.user)} '
            f'<form method="post" action="/logout"><input type="hidden" name="csrf" '
            f'value="{esc(viewer.csrf)}"><button>sign out</button></form></span>'
        )
    elif viewer.actions_enabled:
        who = '<span class="who"><a href="/login">operator sign-in</a></span>'
    else:
        who = '<span class="who">read-only</span>'
    script = f'<script nonce="{esc(nonce)}">{_POLL_JS % POLL_MS}</script>' if live else ""
    live_attr = " data-live" if live else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · edgeloop</title>"
        f"<style>{stylesheet()}{_EXTRA_CSS}</style></head><body>"
        f'<header class="bar"><div class="in"><strong>edgeloop</strong>{nav}{who}</div></header>'
        f"<main{live_attr}>{body}</main>{script}</body></html>\n"
    )


def pager(base: str, params: dict[str, str], page: int, has_next: bool) -> Html:
    parts = []
    if page > 1:
        parts.append(link(f"{base}?{urlencode({**params, 'page': str(page - 1)})}", "← newer"))
    parts.append(Html(f"page {page}"))
    if has_next:
        parts.append(link(f"{base}?{urlencode({**params, 'page': str(page + 1)})}", "older →"))
    return Html(f'<p class="pager">{" ".join(parts)}</p>') if page > 1 or has_next else Html("")


def action_form(viewer: Viewer, action: str, label: str, *, reason: bool = True) -> Html:
    """A POST form for an operator action; only for a signed-in operator."""
    if not viewer.can_act:
        return Html("")
    why = (
        '<label>reason <input type="text" name="reason" maxlength="200" '
        'placeholder="why (recorded in the events)"></label> '
        if reason
        else ""
    )
    return Html(
        f'<form class="action" method="post" action="{esc(action)}">'
        f'<input type="hidden" name="csrf" value="{esc(viewer.csrf)}">{why}'
        f"<button>{esc(label)}</button></form>"
    )


def notice(text: str | None, *, problem: bool = False) -> Html:
    if not text:
        return Html("")
    return Html(f'<p class="{"problem" if problem else "notice"}">{esc(text)}</p>')


def kv(pairs: Sequence[tuple[str, object]]) -> Html:
    rows = "".join(
        f"<dt>{esc(k)}</dt><dd>{v if isinstance(v, Html) else esc(v)}</dd>" for k, v in pairs
    )
    return Html(f'<dl class="kv">{rows}</dl>')


def fleet_table(rows: list[dict[str, Any]], clk: Clock) -> Html:
    if not rows:
        return empty("no devices known yet")
    body = [
        [
            device_link(d["device"]),
            badge("online", "passed") if d["online"] else badge("offline", "failed"),
            d["serving"] or "–",
            d["desired"] or "–",
            badge("drift", "warn") if d["drift"] else "–",
            num(d["rss_mb"], 1) if d["rss_mb"] is not None else "–",
            count(d["outbox_depth"]) if isinstance(d["outbox_depth"], int) else "–",
            clk.utc(d["last_seen"]) if isinstance(d["last_seen"], int | float) else "–",
        ]
        for d in rows
    ]
    return table(
        ["device", "status", "serving", "desired", "drift", "RSS MB", "outbox", "last seen"],
        body,
        numeric=[5, 6],
        cls="data fleet",
    )


def events_table(rows: list[dict[str, Any]], clk: Clock) -> Html:
    if not rows:
        return empty("no control-node events recorded")
    return table(
        ["time (UTC)", "kind", "subject", "message"],
        [
            [clk.utc(e["ts"]), badge(e["kind"], "other"), e["subject"] or "", e["message"]]
            for e in rows
        ],
        cls="data events",
    )


def state_badge(state: str) -> Html:
    return badge(state, tone(state))
