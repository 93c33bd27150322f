"""What `edgeloop train` prints about parity and the agent memory a model needs."""

from __future__ import annotations

from pathlib import Path

from edgeloop_control.cli.train import parity_line, size_line
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.training.footprint import agent_memory_estimate


def test_parity_line_speaks_the_task() -> None:
    reg = parity_line({"task": "regression", "n_rows": 50, "max_rel_diff": 3e-7})
    assert "relative difference 3.00e-07" in reg and "label" not in reg and "None" not in reg
    cls = parity_line({"task": "classification", "n_rows": 50, "label_mismatches": 0})
    assert "0 label mismatches" in cls and "None" not in cls


def test_memory_estimate_matches_the_measured_forest() -> None:
    # bench/bench_model_memory.py: a 4.98 MB forest took the agent from 61.4 to 127.7 MB.
    estimate = agent_memory_estimate(int(4.98 * 2**20), "rf")
    assert abs(estimate / 2**20 - 127.7) < 5


def test_a_big_forest_warns_past_the_configured_budget(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    small = size_line(300_000, "hgb", ws)
    assert "warning" not in small and "MB resident" in small
    big = size_line(25 * 2**20, "rf", ws)
    assert "warning" in big and "200 MB" in big
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write("\n[train]\nagent_memory_budget_mb = 1000\n")
    assert "warning" not in size_line(25 * 2**20, "rf", Workspace.open(ws.root))
