"""One device-id rule on both sides: the control CLI and the agent refuse the same ids.

The rule is ``edgeloop_agent.wire.names.check_device_id``: MQTT's topic-level rules,
letters/digits/'_'/'.'/'-', at most 128 characters, and not a reserved level
under the prefix (``models``, ``control`` ...). Every command that takes a
device id refuses a bad one with one line and a non-zero exit, before it
publishes anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace

BAD_IDS = ["d\n", "d\x01", "..", "$SYS", "x" * 5000, "models", "Control", "a/b", "a+", "#", ""]
AGENT = str(Path(sys.executable).parent / "edgeloop-agent")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


def _run(ws: Workspace, broker_url: str, *args: str):
    runner = CliRunner()
    return runner.invoke(app, ["-w", str(ws.root), "--broker", broker_url, *args])


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda v: ascii(v)[:12])
def test_cli_commands_refuse_bad_device_ids(ws, broker, probe, bad):
    probe.subscribe("#")
    commands = [
        ["deploy", "sensor@v1", "--device", "ok-1", "--device", bad],
        ["ab", "start", "sensor@v1", "sensor@v2", "--device", bad],
        ["rollout", "start", "sensor@v1", "--device", bad],
        ["group", "set", "g1", "ok-1", bad],
    ]
    for args in commands:
        result = _run(ws, broker.url, *args)
        assert result.exit_code != 0, (args, result.output)
        assert "device id" in result.output, (args, result.output)
    assert probe.messages.empty(), "something was published for a bad device id"
    db = ControlDB(ws.control_db)
    try:
        assert db.devices() == [] and db.all_desired() == {}
    finally:
        db.close()


@pytest.mark.parametrize(
    "bad", ["d\n", "..", "$SYS", "x" * 5000, "models", "fleet"], ids=lambda v: ascii(v)[:12]
)
def test_agent_refuses_bad_device_id_at_start(tmp_path, bad):
    out = subprocess.run(
        [AGENT, "--broker", "mqtt://127.0.0.1:9", "--device-id", bad, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "device id" in lines[0], out.stderr
