"""The fleet in the Prometheus text format, from the control database.

Served on ``/metrics`` by ``edgeloop serve --http``. Counters are folded in
incrementally: each scrape reads only the ``variant_stats`` rows added since the
previous one (by rowid), so a scrape costs the same after a month as after a
minute. A restarted control node re-reads the table once; Prometheus sees that
as a counter reset, which ``rate()`` handles.

Cardinality (10,000 devices, 2 variants each): per-device series are
``device_online``, ``device_last_seen_timestamp_seconds``,
``device_resident_memory_bytes``, ``device_outbox_depth`` (4 x 10,000) plus
``device_requests_total``/``device_errors_total``/``device_drift`` per device and
variant (3 x 20,000): about 100,000 series. Latency histograms are per variant
only (16 buckets x variants), never per device, which alone would be 340,000.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from edgeloop_agent.wire.exposition import TextWriter, write_histogram
from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.infra import sql

PREFIX = "edgeloop"


class FleetMetrics:
    """Cumulative fleet counters, updated from the control database on each render."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watermark = 0
        self._counts: dict[tuple[str, str], list[int]] = {}  # (device, variant) -> [req, err]
        self._latency: dict[str, LatencyHistogram] = {}

    def _fold(self, conn: sql.Connection) -> None:
        rows = conn.execute(
            "SELECT rowid, device, variant, requests, errors, latency FROM variant_stats "
            "WHERE rowid > ? ORDER BY rowid",
            (self._watermark,),
        ).fetchall()
        for rowid, device, variant, requests, errors, latency in rows:
            counts = self._counts.setdefault((device, variant), [0, 0])
            counts[0] += int(requests or 0)
            counts[1] += int(errors or 0)
            if latency:
                try:
                    hist = LatencyHistogram.from_dict(json.loads(latency))
                except ValueError:  # a malformed report is not evidence; skip it
                    hist = None
                if hist is not None:
                    merged = self._latency.get(variant)
                    if merged is None:
                        self._latency[variant] = hist
                    else:
                        merged.merge(hist)
            self._watermark = rowid

    def render(self, conn: sql.Connection) -> str:
        with self._lock:
            self._fold(conn)
            counts = {k: list(v) for k, v in self._counts.items()}
            latency = dict(self._latency)
            out = TextWriter(PREFIX)
            self._fleet(out, conn)
            out.metric("device_requests_total", "counter", "Requests a device answered.")
            for (device, variant), (requests, _) in sorted(counts.items()):
                out.sample(
                    "device_requests_total", {"device": device, "variant": variant}, requests
                )
            out.metric("device_errors_total", "counter", "Requests a device refused.")
            for (device, variant), (_, errors) in sorted(counts.items()):
                out.sample("device_errors_total", {"device": device, "variant": variant}, errors)
            out.metric(
                "request_duration_seconds", "histogram", "Agent-side latency, per model variant."
            )
            for variant, hist in sorted(latency.items()):
                write_histogram(out, "request_duration_seconds", {"variant": variant}, hist)
            self._policies(out, conn)
            self._workers(out, conn)
            return out.text()

    def _fleet(self, out: TextWriter, conn: sql.Connection) -> None:
        rows = conn.execute(
            "SELECT device, online, last_seen, telemetry, drift FROM devices ORDER BY device"
        ).fetchall()
        out.metric("fleet_devices", "gauge", "Devices the control node knows.")
        out.sample("fleet_devices", {}, len(rows))
        out.metric("fleet_devices_online", "gauge", "Devices whose last status said online.")
        out.sample("fleet_devices_online", {}, sum(1 for r in rows if r[1]))
        out.metric("device_online", "gauge", "1 if the device's last status said online.")
        out.metric("device_last_seen_timestamp_seconds", "gauge", "Last message from a device.")
        out.metric("device_resident_memory_bytes", "gauge", "Agent RSS at its last report.")
        out.metric("device_outbox_depth", "gauge", "Messages in the agent's outbox.")
        out.metric("device_drift", "gauge", "1 if the newest drift window was flagged.")
        for device, online, last_seen, telemetry, drift in rows:
            labels = {"device": device}
            out.sample("device_online", labels, 1 if online else 0)
            if isinstance(last_seen, (int, float)):
                out.sample("device_last_seen_timestamp_seconds", labels, float(last_seen))
            tel = _json(telemetry)
            rss = (tel.get("process") or {}).get("rss_bytes") or tel.get("rss_bytes")
            if isinstance(rss, (int, float)) and not isinstance(rss, bool):
                out.sample("device_resident_memory_bytes", labels, rss)
            depth = tel.get("outbox_depth")
            if isinstance(depth, int) and not isinstance(depth, bool):
                out.sample("device_outbox_depth", labels, depth)
            for variant, state in sorted(_json(drift).items()):
                if isinstance(state, Mapping) and isinstance(state.get("data_drift"), bool):
                    out.sample(
                        "device_drift",
                        {"device": device, "variant": str(variant)},
                        int(state["data_drift"]),
                    )

    def _policies(self, out: TextWriter, conn: sql.Connection) -> None:
        for table, name, text in (
            ("experiments", "experiments", "A/B experiments by state."),
            ("rollouts", "rollouts", "Rollouts by state."),
        ):
            out.metric(name, "gauge", text)
            try:
                rows = conn.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")
            except sql.OperationalError:  # that policy never ran on this workspace
                continue
            for state, n in rows:
                out.sample(name, {"state": str(state)}, n)

    def _workers(self, out: TextWriter, conn: sql.Connection) -> None:
        """With several `edgeloop serve --worker`s: who holds the policies lease, until when,
        and each worker's last heartbeat (alert on time() minus it)."""
        out.metric(
            "policies_lease_expiry_timestamp_seconds",
            "gauge",
            "When the policies lease expires unless its holder renews it.",
        )
        out.metric("worker_heartbeat_timestamp_seconds", "gauge", "A worker's last heartbeat.")
        if sql.has_table(conn, "leases"):
            for holder, expires_at in conn.execute(
                "SELECT holder, expires_at FROM leases WHERE name = 'policies'"
            ):
                out.sample(
                    "policies_lease_expiry_timestamp_seconds", {"holder": holder}, expires_at
                )
        if sql.has_table(conn, "workers"):
            for name, heartbeat in conn.execute("SELECT name, heartbeat_at FROM workers"):
                out.sample("worker_heartbeat_timestamp_seconds", {"worker": name}, heartbeat)


def _json(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
