"""The CLI's one error path: any EdgeloopError is one ``error:`` line on stderr.

Exit 2 for a setting or workspace that cannot be used (ConfigError, like click's
own usage errors), 1 for any other failure the user can act on; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.cli.common import OneLineErrors
from edgeloop_control.errors import ConfigError
from edgeloop_control.infra.workspace import Workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-errors") / "ws"
    assert CliRunner().invoke(app, ["init", str(root)]).exit_code == 0
    return root


def _workspace_with(root: Path, config: str) -> Path:
    """A workspace directory whose edgeloop.toml is exactly ``config``."""
    root.mkdir()
    (root / "edgeloop.toml").write_text(config, encoding="utf-8")
    return root


# (arguments after `-w WS`, expected exit code, text the one line must hold)
CASES: list[tuple[list[str], int, str]] = [
    # Workspace and settings: ConfigError, exit 2.
    (["init", "{ws}"], 2, "already an edgeloop workspace"),
    (["-w", "{missing}", "models", "ls"], 2, "no edgeloop workspace at"),
    (["-w", "{bad_toml}", "features", "ls"], 2, "cannot read"),
    # The section name keeps its brackets (rich markup would eat "[feature_store]").
    (["-w", "{bad_section}", "features", "ls"], 2, "[feature_store] in edgeloop.toml"),
    (["broker", "config", "--site", "models/x", "--central", "mqtt://h"], 2, "site"),
    (["train", "--view", "v", "--target", "y", "--holdout", "1.5"], 2, "holdout must be"),
    (["train", "--view", "v", "--target", "y", "--stage", "gold"], 2, "--stage must be"),
    # The daemon too: exit 2 is what keeps systemd from restarting it every 5 s
    # (RestartPreventExitStatus=2 in systemd/edgeloop-control.service).
    (["-w", "{missing}", "serve"], 2, "cannot start the control daemon: no edgeloop workspace"),
    (["-w", "{bad_token}", "serve", "--http", "127.0.0.1:0"], 2, "[http] token must be"),
    # The agent's own validation (shared with the control node) is bad input too.
    (["--broker", "ftp://x", "fleet"], 2, "must start with mqtt:// or mqtts://"),
    # Anything else the user can act on: exit 1.
    (["features", "show", "nope"], 1, "unknown view 'nope'"),
    (["train", "--view", "nope", "--target", "y"], 1, "nope"),
    (["models", "show", "sensor@v9"], 1, "sensor"),
    (["group", "set", "line-1", "bad/device"], 1, "device id"),
    (["report", "--since", "3 days"], 1, "--since '3 days'"),
    (["drift", "--device", "+"], 1, "device id"),
    (["rollout", "abort", "ro-nope"], 1, "no rollout 'ro-nope'"),
    (["deploy", "sensor@v1", "--device", "a/b"], 1, "device id"),
]


@pytest.mark.parametrize(
    ("args", "code", "needle"), CASES, ids=[" ".join(c[0])[:40] for c in CASES]
)
def test_a_bad_request_is_one_line(
    ws: Path, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    paths = {
        "ws": str(ws),
        "missing": str(tmp_path / "nowhere"),
        "bad_toml": str(_workspace_with(tmp_path / "t", "[broker\nurl = ")),
        "bad_section": str(_workspace_with(tmp_path / "s", "feature_store = 3\n")),
        "bad_token": str(_workspace_with(tmp_path / "h", '[http]\ntoken = "short"\n')),
    }
    argv = [a.format(**paths) for a in args]
    if argv[0] != "-w":
        argv = ["-w", str(ws), *argv]
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "80"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.output


def _probe_app(error: Exception) -> typer.Typer:
    probe = typer.Typer(cls=OneLineErrors)

    @probe.command("boom")
    def boom() -> None:
        raise error

    @probe.command("fine")
    def fine() -> None:
        typer.echo("ok")

    return probe


def test_a_config_error_in_any_group_exits_2_and_a_bug_keeps_its_traceback() -> None:
    config = CliRunner().invoke(_probe_app(ConfigError("[x] y must be positive")), ["boom"])
    assert (config.exit_code, config.stderr) == (2, "error: [x] y must be positive\n")
    bug = CliRunner().invoke(_probe_app(KeyError("a bug")), ["boom"])
    assert isinstance(bug.exception, KeyError) and bug.exit_code == 1
    assert "error:" not in bug.stderr


def test_a_workspace_error_is_still_a_value_error_for_old_callers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no edgeloop workspace"):
        Workspace.open(tmp_path)
