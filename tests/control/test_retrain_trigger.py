"""When the retrain policy sees drift, and which devices an episode covers.

The trigger reads only the control database (drift windows, concept-drift reports, desired
state, device groups), so these tests need no registry: a real SQLite database with the
fleet's evidence written in the daemon's own tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.retrain.config import RetrainConfig
from edgeloop_control.policies.retrain.trigger import DriftEvidence, DriftTrigger
from tests.control.retrain_env import CHAMPION, T0, RetrainEnv

DRIFTING = [(1, 0), (1, 0), (1, 0)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[RetrainEnv]:
    ws = Workspace.init(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    env = RetrainEnv(ws, db, FeatureStore(ws.feature_store_dir), [db])
    try:
        yield env
    finally:
        env.close()


def trigger(env: RetrainEnv, **config: Any) -> DriftTrigger:
    return DriftTrigger(env.db, RetrainConfig(**config))


def test_three_flagged_windows_in_a_row_are_drift(env: RetrainEnv) -> None:
    env.serve("pump-1")
    env.windows("pump-1", T0, DRIFTING, features=["x2"])
    episode = trigger(env).detect(CHAMPION)
    assert episode is not None
    assert episode.drifting == {"pump-1": DriftEvidence("data", ["x2"], T0 - 180)}
    assert episode.since == T0 - 180 and episode.scope == ["pump-1"]
    assert "pump-1: 3 consecutive drifting windows (x2)" in episode.message
    assert episode.event_data()["devices"]["pump-1"]["features"] == ["x2"]


@pytest.mark.parametrize(
    "flags",
    [
        [(1, 0), (1, 0)],  # fewer windows than consecutive_windows
        [(1, 0), (0, 0), (1, 0)],  # a calm window in between
        [(1, 0), (1, 0), (0, 0)],  # the newest window is calm again
    ],
)
def test_below_the_threshold_is_no_drift(env: RetrainEnv, flags: list[tuple[int, int]]) -> None:
    env.serve("pump-1")
    env.windows("pump-1", T0, flags)
    assert trigger(env).detect(CHAMPION) is None


def test_windows_without_enough_data_do_not_count(env: RetrainEnv) -> None:
    env.serve("pump-1")
    env.windows("pump-1", T0 - 600, [(0, 0)])
    env.windows("pump-1", T0, DRIFTING, enough=0)
    assert trigger(env).detect(CHAMPION) is None
    assert trigger(env, consecutive_windows=1).detect(CHAMPION) is None  # the calm one counts


def test_only_the_configured_signals_count(env: RetrainEnv) -> None:
    env.serve("pump-1")
    env.windows("pump-1", T0, [(0, 1), (0, 1), (0, 1)])  # the model's output drifts
    assert trigger(env, signals=["features"]).detect(CHAMPION) is None
    episode = trigger(env, signals=["output"]).detect(CHAMPION)
    assert episode is not None and episode.drifting["pump-1"].features == []
    assert "(model output)" in episode.message


def test_a_concept_detection_starts_at_the_report_that_saw_it(env: RetrainEnv) -> None:
    env.serve("pump-1")
    env.concept("pump-1", [(T0 - 120, 0), (T0 - 60, 0)])
    assert trigger(env).detect(CHAMPION) is None  # the counter did not move
    env.concept("pump-1", [(T0, 1)])
    episode = trigger(env).detect(CHAMPION)
    assert episode is not None
    assert episode.drifting["pump-1"] == DriftEvidence("concept", [], T0 - 60)
    assert "error rate rose" in episode.message
    assert trigger(env, signals=["features", "output"]).detect(CHAMPION) is None


def test_only_devices_serving_the_variant_are_looked_at(env: RetrainEnv) -> None:
    env.serve("pump-1", "sensor@v0")  # another version
    env.serve("pump-2", weight=0)  # told to run it, without traffic
    env.serve("pump-3", role="shadow")
    for device in ("pump-1", "pump-2", "pump-3"):
        env.windows(device, T0, DRIFTING, variant=CHAMPION)
    t = trigger(env)
    assert t.devices_running(CHAMPION) == []
    assert t.detect(CHAMPION) is None


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("device", ["pump-1"]),
        ("group", ["pump-1", "pump-2"]),
        ("fleet", ["pump-1", "pump-2", "pump-3"]),
    ],
)
def test_scope_decides_which_devices_the_episode_covers(
    env: RetrainEnv, scope: str, expected: list[str]
) -> None:
    env.serve("pump-1", groups=["hall-a"])
    env.serve("pump-2", groups=["hall-a", "night"])
    env.serve("pump-3", groups=["hall-b"])
    env.serve("pump-4", "sensor@v0", groups=["hall-a"])  # in the group, not on the champion
    env.windows("pump-1", T0, DRIFTING)
    episode = trigger(env, scope=scope).detect(CHAMPION)
    assert episode is not None and episode.scope == expected
    assert list(episode.drifting) == ["pump-1"]
    assert f"Retraining scope {scope}: {', '.join(expected)}" in episode.message


def test_the_episode_starts_at_the_earliest_evidence(env: RetrainEnv) -> None:
    env.serve("pump-1")
    env.serve("pump-2")
    env.windows("pump-1", T0, DRIFTING)
    env.windows("pump-2", T0 - 500, DRIFTING)
    episode = trigger(env).detect(CHAMPION)
    assert episode is not None and sorted(episode.drifting) == ["pump-1", "pump-2"]
    assert episode.since == T0 - 500 - 180


def test_a_device_only_desired_state_names_is_in_no_scope(env: RetrainEnv) -> None:
    """A typo deployed before devices had to be known (desired state, no inventory row)
    must not join a fleet-wide retraining scope, or the A/B test would wait for it."""
    env.serve("pump-1")
    env.db.set_desired("pump-99", {"revision": 1, "models": [
        {"name": "sensor", "variant": CHAMPION, "role": "serve", "weight": 100}
    ]})  # fmt: skip
    env.windows("pump-1", T0, DRIFTING)
    t = trigger(env, scope="fleet")
    assert t.devices_running(CHAMPION) == ["pump-1"]
    episode = t.detect(CHAMPION)
    assert episode is not None and episode.scope == ["pump-1"]
