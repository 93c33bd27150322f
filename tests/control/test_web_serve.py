"""``edgeloop serve --http``: beyond loopback only with a token, refused at start in one
line; with a token the real daemon serves the dashboard and its sign-in on that address."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from edgeloop_control.infra.mosquitto import PrivateBroker, free_port
from edgeloop_control.infra.workspace import Workspace
from tests.control.web_client import Browser

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


def _serve(ws: Workspace, broker: PrivateBroker, listen: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EDGELOOP, "-w", str(ws.root), "--broker", broker.url, "serve", "--http", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _refused(proc: subprocess.Popen[bytes]) -> str:
    """stderr of a start that must fail fast; a daemon that starts anyway is killed."""
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("edgeloop serve started instead of refusing") from None
    assert proc.returncode != 0
    return err.decode()


def _config(ws: Workspace, text: str) -> Workspace:
    path = Path(ws.root) / "edgeloop.toml"
    path.write_text(path.read_text() + "\n[retrain]\nenabled = false\n" + text)
    return Workspace.open(ws.root)


def test_non_loopback_without_a_token_is_refused_in_one_line(
    tmp_path: Path, broker: PrivateBroker
) -> None:
    ws = _config(Workspace.init(tmp_path / "ws", broker=broker.url), "")
    err = _refused(_serve(ws, broker, f"0.0.0.0:{free_port()}"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert "requires an operator token" in lines[-1] and "Traceback" not in err


def test_a_too_short_token_is_refused(tmp_path: Path, broker: PrivateBroker) -> None:
    ws = _config(Workspace.init(tmp_path / "ws", broker=broker.url), '[http]\ntoken = "abc"\n')
    err = _refused(_serve(ws, broker, f"127.0.0.1:{free_port()}"))
    assert "at least 16 characters" in err and "Traceback" not in err


def test_with_a_token_file_it_serves_beyond_loopback(tmp_path: Path, broker: PrivateBroker) -> None:
    ws = _config(
        Workspace.init(tmp_path / "ws", broker=broker.url), '[http]\ntoken_file = "http-token"\n'
    )
    port = free_port()
    proc = _serve(ws, broker, f"0.0.0.0:{port}")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                    assert resp.status == 200
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                assert time.monotonic() < deadline, "the dashboard did not come up"
                time.sleep(0.2)
        token_file = Path(ws.root) / "http-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        web = Browser(base)
        assert web.get("/").status == 200
        assert web.login("wrong-token-wrong-token").status == 403
        assert web.login(token_file.read_text().strip()).status == 303
        assert "signed in as alice" in web.get("/").text
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
