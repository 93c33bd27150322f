"""Section 5: control-node events in time order (what the loop did and why)."""

from __future__ import annotations

from collections.abc import Sequence

from ..markup import Html, badge, empty, table
from ..model import Event
from ..timefmt import Clock

# Event kinds drawn in a state colour; any other kind is shown neutral.
KIND_TONES = {
    "drift_detected": "warn",
    "rollback": "rollback",
    "ab_decision": "running",
    "ab_started": "running",
    "rollout_batch": "passed",
    "deploy": "passed",
    "registered": "other",
    "retrain": "other",
}


def render_events(
    events: Sequence[Event], clock: Clock, why_empty: str = "no control-node events were recorded"
) -> Html:
    head = '<section id="events"><h2>Events</h2>'
    if not events:
        return Html(head + empty(why_empty) + "</section>")
    # sorted() is stable: events with the same timestamp keep the order they were logged in.
    ordered = sorted(events, key=lambda e: e.t)
    # A long page shows dates already: one UTC column instead of elapsed + clock time.
    when = (
        (lambda e: [clock.utc(e.t)])
        if clock.dates
        else (lambda e: [clock.rel(e.t), clock.utc(e.t)])
    )
    rows = [
        [*when(e), badge(e.kind, KIND_TONES.get(e.kind, "other")), e.subject, e.message]
        for e in ordered
    ]
    heads = ["time (UTC)"] if clock.dates else ["time", "UTC"]
    return Html(
        head + table([*heads, "kind", "subject", "message"], rows, cls="data events") + "</section>"
    )
