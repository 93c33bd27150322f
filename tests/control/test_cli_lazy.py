"""`edgeloop --help` stays fast: building the command tree imports no heavy library."""

from __future__ import annotations

import subprocess
import sys

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
