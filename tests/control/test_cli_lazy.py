"""`edgeloop --help` stays fast: building the command tree imports no heavy library."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from edgeloop_control.cli import app, lazy

HEAVY = ("pandas", "pyarrow", "scipy", "sklearn", "skl2onnx", "onnx", "mlflow", "dvc")


def test_the_command_tree_imports_no_heavy_library() -> None:
    probe = (
        "import sys\n"
        "from typer.main import get_command\n"
        "from edgeloop_control.cli import app\n"
        "get_command(app)\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "", f"imported at start-up: {out.stdout.strip()}"


def test_help_imports_no_command_module() -> None:
    """`edgeloop --help` lists every command from cli/lazy.py's table: it used to import
    all of them (paho, cryptography, the policies, rich's progress bars), ~1.1 s of 1.3 s."""
    probe = (
        "import sys\n"
        "from edgeloop_control.cli import main\n"
        "sys.argv = ['edgeloop', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in sys.modules if m.startswith(('paho', 'cryptography', "
        "'edgeloop_control.policies', 'edgeloop_control.fleet')) or "
        "(m.startswith('edgeloop_control.cli.') and m not in ('edgeloop_control.cli.common', "
        "'edgeloop_control.cli.lazy'))]\n"
        "print(' '.join(sorted(loaded)), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stderr.strip() == "", f"imported by --help: {out.stderr.strip()}"
    for name in lazy.COMMANDS:
        assert f" {name} " in out.stdout, name  # every command is listed


def test_the_lazy_table_matches_the_commands() -> None:
    """Each listed command exists in its module with the same one-line help, and every
    command a module registers is listed (else `edgeloop --help` would not show it)."""
    for name, spec in lazy.COMMANDS.items():
        real = lazy.load(name)
        assert real.name == name
        assert real.get_short_help_str(300) == spec.help or (
            (real.help or "").split("\n")[0].strip() == spec.help
        ), name
    for module in {s.module for s in lazy.COMMANDS.values() if not s.group}:
        holder = typer.Typer()
        importlib.import_module(f"edgeloop_control.cli.{module}").register(holder)
        names = {c.name for c in holder.registered_commands} | {
            g.name for g in holder.registered_groups
        }
        listed = {n for n, s in lazy.COMMANDS.items() if s.module == module}
        assert names == listed, module


def test_a_command_runs_after_lazy_loading(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "init"])
    assert result.exit_code == 0, result.output
    models = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "models"])
    assert models.exit_code == 0 and "no models registered yet" in models.stdout
    bad = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "modles"])
    assert bad.exit_code == 2 and "No such command" in bad.output
