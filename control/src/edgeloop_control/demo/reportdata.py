"""The demo's HTML report: the workspace report (``edgeloop report``'s collector) plus the
demo's own narrated timeline, the moment the sensors were changed and its traffic figures."""

from __future__ import annotations

import time
from typing import Any

from edgeloop_control.demo.fleetsim import DemoClient
from edgeloop_control.demo.narrate import Narrator
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.report.collect import collect_report
from edgeloop_control.report.history import Selection
from edgeloop_control.report.timefmt import elapsed


def collect_report_data(
    ws: Workspace,
    db: ControlDB,
    *,
    say: Narrator,
    shift_at: float | None,
    client: DemoClient,
    devices: list[str],
) -> dict[str, Any]:
    data = collect_report(
        ws,
        db,
        Selection(since=say.started_wall),
        title="edgeloop demo: a pump fleet notices a sensor change and heals itself",
    )
    data["timeline"] = [
        {"t": t, "duration_s": d, "step": title, "detail": ""} for title, t, d in say.history
    ]
    if data["drift"] is not None:
        data["drift"]["shift_at"] = shift_at
    # What the demo's app saw, beside the control node's own counts in the fleet table.
    traffic = {
        "duration": elapsed(say.elapsed),  # monotonic: the run's real length
        "requests sent": sum(s.sent for s in client.stats.values()),
        "request errors": sum(s.errors for s in client.stats.values()),
        "demo devices": len(devices),
        "report written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    data["summary"] = {**traffic, **data["summary"]}
    return data
