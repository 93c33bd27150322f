"""train_and_register on a real workspace: the split it picks, and no run for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.signing import ensure_keypair
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.jobs.train_and_register import train_and_register
from edgeloop_control.registry import Registry
from edgeloop_control.training import TrainConfig, TrainingError


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    Registry.for_workspace(ws)
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    frame = pd.DataFrame(
        {
            "id": np.arange(300),
            "ts": pd.date_range("2026-01-01", periods=300, freq="h", tz="UTC"),
            "x": x,
            "flag": rng.random(300) < 0.5,
            "y": (x + rng.normal(0, 0.5, 300) > 0).astype(int),
        }
    )
    store = FeatureStore(ws.feature_store_dir)
    store.ingest(frame.drop(columns="ts"), "plain", entity="id")
    store.ingest(frame, "timed", entity="id", timestamp="ts")
    return ws


def runs(ws: Workspace) -> list[Path]:
    d = ws.local_runs_dir / "runs"
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.mark.parametrize(
    ("view", "split", "expected"),
    [("plain", "auto", "random"), ("timed", "auto", "time"), ("timed", "random", "random")],
)
def test_split_follows_the_view_and_is_recorded(
    ws: Workspace, view: str, split: str, expected: str
) -> None:
    outcome = train_and_register(
        ws, name="m", config=TrainConfig(target="y", algo="logreg", split=split), view=view
    )
    assert outcome.version.metadata["split"] == expected
    assert outcome.result.time_based_holdout == (expected == "time")


def test_time_split_without_event_time_is_refused_in_one_line() -> None:
    with pytest.raises(TrainingError, match="split 'time' needs an event timestamp"):
        TrainConfig(target="y", split="time")


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(target="nope", algo="logreg"),
        TrainConfig(target="x", algo="logreg", task="classification"),
    ],
)
def test_input_errors_leave_no_tracking_run(ws: Workspace, config: TrainConfig) -> None:
    before = runs(ws)
    with pytest.raises(TrainingError):
        train_and_register(ws, name="m", config=config, view="plain")
    assert runs(ws) == before


def test_a_bad_model_name_is_refused_before_anything_is_written(ws: Workspace) -> None:
    with pytest.raises(ValueError, match="model name"):
        train_and_register(ws, name="m\n", config=TrainConfig(target="y"), view="plain")
    assert runs(ws) == []
