"""Hostile and valid fleet messages for the control daemon, and the daemon to aim them at.

Shared by tests/control/test_daemon_poison.py (a few hundred messages) and
bench/fuzz_daemon.py (tens of thousands). Everything runs for real: the daemon
object of ``edgeloop serve`` on its own thread, a real Mosquitto, real SQLite
and feature store; messages are real MQTT publishes.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from edgeloop_control.daemon.service import ControlDaemon
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace

LEAVES = ("status", "telemetry", "samples", "labels")
SENTINEL = "sentinel-1"


def status_doc(device: str, ts: float | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "device": device,
        "online": True,
        "state": "serving",
        "revision": 1,
        "desired_revision": 1,
        "models": [
            {"name": "m", "version": "v1", "sha256": "ab" * 32, "role": "serve", "weight": 100.0}
        ],
        "error": None,
        "agent_version": "0.1.0",
        "started_at": 1764160000.0,
        "ts": ts if ts is not None else time.time(),
        **extra,
    }


def envelope(device: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{device}:{uuid.uuid4().hex}:1",
        "device_id": device,
        "kind": kind,
        "ts": time.time(),
        "payload": payload,
    }


def report_doc(device: str) -> dict[str, Any]:
    rid = f"{device}:{uuid.uuid4().hex}:1"
    now = time.time()
    return envelope(
        device,
        "report",
        {
            "report_id": rid,
            "device": device,
            "ts": now,
            "revision": 1,
            "experiment": None,
            "variants": {"m@v1": {"name": "m", "version": "v1", "role": "serve"}},
            "metrics": {
                "variants": {
                    "m@v1": {
                        "requests": 10,
                        "predictions": 10,
                        "errors": {"non_finite": 1},
                        "classification": {"n": 4, "correct": 3},
                        "regression": {"n": 0, "sum_abs_error": 0.0, "sum_sq_error": 0.0},
                        "latency": None,
                    }
                }
            },
            "drift": [
                {
                    "variant": "m@v1",
                    "version": "v1",
                    "enough_data": True,
                    "dataset_drift": False,
                    "output": {"drift": False},
                    "features": [{"name": "x", "drift": False}],
                    "window": {"kind": "count", "n_rows": 200},
                    "t_start": now - 10,
                    "t_end": now,
                }
            ],
            "concept_drift": {
                "m@v1": {"n": 4, "error_rate": 0.25, "drift": False, "detections": 0}
            },
            "process": {"rss_bytes": 7.0e7, "cpu_percent": 3.5},
            "outbox": {"depth": 0, "dropped": 0},
        },
    )


def sample_doc(device: str, sample_id: str | None = None) -> dict[str, Any]:
    return envelope(
        device,
        "sample",
        {
            "sample_id": sample_id or f"{device}:{uuid.uuid4().hex}:2",
            "device": device,
            "ts": time.time(),
            "request_id": "r1",
            "model": "m",
            "version": "v1",
            "variant": "m@v1",
            "features": {"x": 1.5, "y": 2.0},
            "prediction": 1,
            "label": None,
        },
    )


def label_doc(device: str, sample_id: str | None = None) -> dict[str, Any]:
    return envelope(
        device,
        "label",
        {
            "sample_id": sample_id or f"{device}:{uuid.uuid4().hex}:2",
            "request_id": "r1",
            "device": device,
            "ts": time.time(),
            "label": 1,
            "variant": "m@v1",
        },
    )


VALID = {"status": status_doc, "telemetry": report_doc, "samples": sample_doc, "labels": label_doc}

# -- strategies ---------------------------------------------------------------------------

BAD_DEVICES = ["models", "control", "$SYS", "..", "-x", "a" * 300, "d\u00e9", "x y", "FLEET"]
GOOD_DEVICES = ["fz-1", "fz-2", "Fz_3.a"]

_weird_numbers = st.sampled_from(
    [10**400, -(10**30), 2**63, -1, 1e308, 0.0, -0.0, 1e-320, True, False]
)
_weird_text = st.sampled_from(
    ["\ud800", "\x00", "a" * 10_000, "", "\u202e", "{}", "null", "models", "\ufffe"]
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | _weird_numbers
    | _weird_text
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _replace_at(doc: Any, path: list[int], value: Any) -> Any:
    """``doc`` with the node chosen by ``path`` (indices into sorted keys) replaced."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    out = copy.copy(doc)
    if isinstance(out, dict):
        key = sorted(out)[path[0] % len(out)]
        out[key] = _replace_at(out[key], path[1:], value)
    else:
        i = path[0] % len(out)
        out[i] = _replace_at(out[i], path[1:], value)
    return out


@st.composite
def fleet_messages(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """``(leaf, device, payload)``: mostly valid messages with one field broken, plus raw junk."""
    leaf = draw(st.sampled_from(LEAVES))
    device = draw(st.sampled_from(GOOD_DEVICES) | st.sampled_from(BAD_DEVICES))
    shape = draw(st.integers(0, 9))
    if shape == 0:
        payload = draw(st.binary(max_size=64))
    elif shape == 1:
        payload = json.dumps(draw(json_values)).encode()
    elif shape == 2:
        payload = draw(
            st.sampled_from(
                [
                    _deep(100_000).encode(),
                    b'{"a":' + b"1" * 5000 + b"}",
                    b"NaN",
                    b'{"online": Infinity}',
                    b"1e999",
                    b'"\\ud800"',
                    b"\xff\xfe",
                    b"x" * 300_000,  # over the samples/labels/status limits
                ]
            )
        )
    elif shape <= 4:
        payload = json.dumps(VALID[leaf](device)).encode()  # valid, unless the device is bad
    else:
        path = draw(st.lists(st.integers(0, 50), min_size=1, max_size=5))
        broken = _replace_at(VALID[leaf](device), path, draw(json_values))
        payload = json.dumps(broken).encode()
    return leaf, device, payload


# -- the daemon under test --------------------------------------------------------------------


class RunningDaemon:
    """``edgeloop serve``'s daemon object on a thread, with its own DB reader."""

    def __init__(self, ws: Workspace, broker_url: str) -> None:
        self.daemon = ControlDaemon(ws, broker_url, tick_s=3600, flush_s=0.2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="daemon", daemon=True)
        self.reader = ControlDB(ws.control_db)
        self.sent = 0  # fuzzed messages published at it so far

    def _run(self) -> None:
        try:
            self.daemon.run(install_signals=False)
        except BaseException as exc:  # recorded for the test to report
            self.error = exc
            raise

    def start(self, timeout: float = 15) -> RunningDaemon:
        self.thread.start()
        assert self.daemon.connected.wait(timeout), "daemon did not connect"
        return self

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.daemon.stop_event.set()
        self.thread.join(30)
        self.reader.close()

    def wait_sentinel(self, probe_publish: Any, timeout: float = 20) -> float:
        """Publish a valid status for SENTINEL and wait until the daemon stored it:
        every message published before it on the same session was handled by then."""
        ts = time.time()
        probe_publish(f"edgeloop/{SENTINEL}/status", json.dumps(status_doc(SENTINEL, ts=ts)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.reader.device(SENTINEL)
            if row and (row.get("status") or {}).get("ts") == ts:
                return ts
            assert self.alive, f"daemon died: {self.error!r}"
            time.sleep(0.02)
        raise AssertionError(f"daemon did not ingest the sentinel status (alive={self.alive})")


def workspace(root: Path) -> Workspace:
    ws = Workspace.init(root)
    return Workspace.open(ws.root)
