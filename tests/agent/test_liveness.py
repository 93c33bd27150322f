"""Thread liveness feeds the systemd watchdog: a dead updater stops the pings."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeloop_agent.liveness import Liveness


def test_a_dead_or_silent_thread_is_a_problem() -> None:
    now = [100.0]
    live = Liveness(clock=lambda: now[0])
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="worker", daemon=True)
    worker.start()
    beat = [100.0]
    live.watch(worker, last_beat=lambda: beat[0], max_silence_s=10)
    assert live.problems() == []
    now[0] = 115.0
    assert live.problems() == ["worker thread silent for 15 s"]
    beat[0] = 114.0
    assert live.problems() == []
    stop.set()
    worker.join()
    assert live.problems() == ["worker thread died"]


class _Die(BaseException):
    """Escapes every `except Exception`: stands for a bug that kills a thread."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_watchdog_pings_stop_when_the_updater_thread_dies(
    broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeloop_agent.agent import Agent
    from edgeloop_agent.config import AgentConfig

    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    # A ping every 0.5 s; a thread silent for 1 s stops them. Shorter limits flake on a
    # loaded 2-core box (the serving thread itself missed a 0.4 s limit there).
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = AgentConfig(
        device_id="live-1", broker=broker.url, state_dir=tmp_path / "state", allow_unsigned=True
    )
    agent = Agent(config)
    runner = threading.Thread(target=agent.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()

    def pings(seconds: float) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                out.append(sock.recv(65536))
            except TimeoutError:
                continue
        return out

    try:
        assert any(b"WATCHDOG=1" in n for n in pings(3.0))

        def die(_: bytes) -> None:
            raise _Die

        monkeypatch.setattr(agent.updater, "apply", die)
        agent.updater.submit_desired(b"{}")
        time.sleep(0.5)  # the thread dies; the pings already queued drain
        pings(1.0)
        after = pings(2.0)
        assert not any(b"WATCHDOG=1" in n for n in after), after
        assert any(b"unhealthy: updater thread died" in n for n in after) or (
            agent.liveness.problems() == ["updater thread died"]
        )
        assert agent.status_document()["threads"] == ["updater thread died"]
    finally:
        agent.request_stop()
        runner.join(30)
        sock.close()


def test_onnxruntime_writes_no_telemetry_database(tmp_path: Path) -> None:
    """onnxruntime 1.32 creates ~/.cache/Microsoft/... at import unless told not to."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, "-c", "import edgeloop_agent.model"], env=env, check=True, timeout=60
    )
    assert not (tmp_path / ".cache" / "Microsoft").exists(), list(tmp_path.rglob("*"))
