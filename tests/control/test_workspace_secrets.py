"""The broker password never lands in the world-readable edgeloop.toml.

`edgeloop init --broker mqtt://user:pw@host` keeps the password in a 0600 file
(in a 0700 directory) that the config names; the environment and systemd
credentials take precedence; an old workspace with the password in its URL keeps
working, with a warning.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_control.cli import app
from edgeloop_control.daemon.service import ControlDaemon
from edgeloop_control.infra.workspace import CONFIG_NAME, Workspace

URL = "mqtt://alice:s3cr%40t-pw@127.0.0.1:1883"


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch):
    for name in ("EDGELOOP_BROKER_PASSWORD", "CREDENTIALS_DIRECTORY", "EDGELOOP_BROKER"):
        monkeypatch.delenv(name, raising=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_keeps_the_password_out_of_the_config(tmp_path):
    root = tmp_path / "ws"
    result = CliRunner().invoke(app, ["--broker", URL, "init", str(root)])
    assert result.exit_code == 0, result.output
    config = (root / CONFIG_NAME).read_text()
    assert "s3cr" not in config
    assert 'url = "mqtt://alice@127.0.0.1:1883"' in config
    secret = root / ".edgeloop" / "broker.password"
    assert secret.read_text() == "s3cr%40t-pw\n"
    assert _mode(secret) == 0o600
    assert _mode(secret.parent) == 0o700
    ws = Workspace.open(root)
    assert ws.broker_url() == URL
    # The daemon connects with it, and prints the address without it.
    daemon = ControlDaemon(ws, ws.broker_url())
    try:
        assert (daemon.address.username, daemon.address.password) == ("alice", "s3cr%40t-pw")
        assert "s3cr" not in str(daemon.address)
    finally:
        daemon.db.close()


def test_environment_and_systemd_credentials_come_first(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    Workspace.init(root, broker=URL)
    ws = Workspace.open(root)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker.password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert BrokerAddress.parse(ws.broker_url()).password == "from-systemd"
    monkeypatch.setenv("EDGELOOP_BROKER_PASSWORD", "from-env")
    assert BrokerAddress.parse(ws.broker_url()).password == "from-env"


def test_a_workspace_without_a_password_is_unchanged(tmp_path):
    ws = Workspace.init(tmp_path / "ws", broker="mqtt://127.0.0.1:1883")
    assert ws.broker_url() == "mqtt://127.0.0.1:1883"
    assert not (ws.root / ".edgeloop" / "broker.password").exists()


def test_old_config_with_a_password_still_works_with_a_warning(tmp_path, caplog):
    root = tmp_path / "ws"
    Workspace.init(root)
    config = root / CONFIG_NAME
    config.write_text(config.read_text().replace("mqtt://127.0.0.1:1883", URL))
    with caplog.at_level(logging.WARNING, logger="edgeloop.workspace"):
        assert Workspace.open(root).broker_url() == URL
    assert "holds the broker password" in caplog.text


def test_a_group_readable_password_file_is_warned_about(tmp_path, caplog):
    root = tmp_path / "ws"
    Workspace.init(root, broker=URL)
    (root / ".edgeloop" / "broker.password").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edgeloop.workspace"):
        assert Workspace.open(root).broker_url() == URL
    assert "readable by other users" in caplog.text
