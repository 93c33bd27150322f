"""`edgeloop serve` stops on SIGTERM (systemd's stop) within a second and says so in one
line; it used to log nothing and take about 5 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.workspace import Workspace

# Wall-clock bounds: make test runs this module after the parallel phase, alone.
pytestmark = pytest.mark.serial

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


def _wait_for(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not logged: {log.read_text()[-2000:]}")


def test_sigterm_logs_one_line_and_stops_within_a_second(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    log = tmp_path / "serve.log"
    with PrivateBroker(tmp_path / "broker") as broker:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [EDGELOOP, "-w", str(ws.root), "--broker", broker.url, "serve", "--tick", "0.5"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            _wait_for(log, "control daemon connected", 60)
            time.sleep(1.0)  # a few ticks in
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text
    stops = [line for line in text.splitlines() if "SIGTERM" in line]
    assert len(stops) == 1 and "stopping" in stops[0], text
    assert took < 1.0, f"took {took:.2f} s to stop after SIGTERM"


def test_sigterm_with_the_broker_gone_stops_within_a_second(tmp_path: Path) -> None:
    """With the broker down, paho sleeps out its reconnect back-off before it sees the stop
    (0.9 s of the stop, measured); the daemon no longer waits for it."""
    ws = Workspace.init(tmp_path / "ws")
    log = tmp_path / "serve.log"
    broker = PrivateBroker(tmp_path / "broker").start()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [EDGELOOP, "-w", str(ws.root), "--broker", broker.url, "serve", "--tick", "0.5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_for(log, "control daemon connected", 60)
        broker.stop()
        time.sleep(2.5)  # into the reconnect back-off
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        broker.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
    assert "SIGTERM received: stopping" in log.read_text()
    assert took < 1.0, f"took {took:.2f} s to stop after SIGTERM"
