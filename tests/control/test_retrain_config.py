"""The retrain policy's config and store on their own: validation, shares, back-off arithmetic,
and state that survives a restart (a real SQLite control database, no workspace needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgeloop_control.errors import ConfigError, EdgeloopError
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.jsoncolumn import CorruptColumn
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.retrain.config import GATE_METRICS, RetrainConfig
from edgeloop_control.policies.retrain.run import RetrainFailed
from edgeloop_control.policies.retrain.store import (
    COLLECTING,
    IDLE,
    RetrainState,
    RetrainStore,
)


def test_defaults_are_valid_and_shares_are_written_like_the_other_policies() -> None:
    cfg = RetrainConfig()
    assert cfg.signals == ("features", "output", "concept") and cfg.scope == "fleet"
    assert RetrainConfig(reference_share="30%", holdout="25%").reference_share == pytest.approx(0.3)
    assert RetrainConfig(holdout="25%").holdout == pytest.approx(0.25)
    assert RetrainConfig(holdout=0.2).holdout == pytest.approx(0.2)
    assert RetrainConfig(reference_share=0).reference_share == 0.0  # no reference rows
    assert RetrainConfig(signals="concept").signals == ("concept",)  # a lone string: one signal
    assert RetrainConfig(signals=["output"]).signals == ("output",)  # TOML lists become tuples


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("signals", [], "retrain.signals"),
        ("signals", ["features", "vibes"], "'vibes'"),
        ("signals", 3, "retrain.signals"),
        ("scope", "planet", "retrain.scope"),
        ("consecutive_windows", 0, "retrain.consecutive_windows"),
        ("consecutive_windows", 1.5, "retrain.consecutive_windows"),
        ("min_samples", "400", "retrain.min_samples"),
        ("min_samples", True, "retrain.min_samples"),
        ("cooldown_s", -1, "retrain.cooldown_s"),
        ("cooldown_s", float("nan"), "retrain.cooldown_s"),
        ("reference_share", "100%", "retrain.reference_share"),
        ("reference_share", -0.1, "retrain.reference_share"),
        ("reference_share", "lots", "retrain.reference_share"),
        ("holdout", 0, "retrain.holdout"),
        ("holdout", 1.0, "retrain.holdout"),
        ("gate_metric", "precision", "retrain.gate_metric"),
        ("gate_margin", "small", "retrain.gate_margin"),
        ("retry_base_s", 0, "retrain.retry_base_s"),
        ("retry_max_s", 10, "retrain.retry_base_s"),  # below the 30 s default base
        ("enabled", "yes", "retrain.enabled"),
    ],
)
def test_a_bad_setting_is_one_config_error_naming_it(key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        RetrainConfig(**{key: value})
    assert says in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # `edgeloop serve` catches ValueError today


def test_workspace_section_is_read_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    config_file = ws.root / "edgeloop.toml"
    original = config_file.read_text()
    config_file.write_text(
        original + '\n[retrain]\nscope = "group"\nsignals = ["output"]\nreference_share = "20%"\n'
    )
    cfg = RetrainConfig.from_workspace(Workspace.open(ws.root))
    assert (cfg.scope, cfg.signals, cfg.reference_share) == ("group", ("output",), 0.2)

    config_file.write_text(original + "\n[retrain]\nmin_sample = 10\n")
    with pytest.raises(
        ConfigError, match=r"\[retrain\] in edgeloop.toml has unknown keys: min_sample"
    ):
        RetrainConfig.from_workspace(Workspace.open(ws.root))


def test_gate_metrics_are_the_ones_the_champion_gate_knows() -> None:
    from edgeloop_control.training.metrics import HIGHER_IS_BETTER

    assert set(GATE_METRICS) == set(HIGHER_IS_BETTER)


def test_retry_delay_doubles_up_to_the_cap_and_never_overflows() -> None:
    cfg = RetrainConfig(retry_base_s=30, retry_max_s=200)
    assert [cfg.retry_delay(n) for n in (1, 2, 3, 4, 5)] == [30, 60, 120, 200, 200]
    assert cfg.retry_delay(100_000) == 200  # a model failing for months


def test_retrain_failed_is_a_user_facing_error() -> None:
    assert issubclass(RetrainFailed, EdgeloopError) and issubclass(RetrainFailed, ValueError)


# -- store -----------------------------------------------------------------------------------


def test_state_round_trips_and_survives_a_new_connection(tmp_path: Path) -> None:
    db = ControlDB(tmp_path / "control.sqlite")
    store = RetrainStore(db)
    assert store.load("sensor") == RetrainState("sensor")  # never acted on: idle
    st = RetrainState("sensor")
    st.open_episode(start=100.0, event=7, devices=["pump-2", "pump-1"])
    st.failed("not enough classes", retry_at=160.0)
    st.last_retrain = 50.0
    store.save(st)
    db.close()

    again = RetrainStore(ControlDB(tmp_path / "control.sqlite")).load("sensor")
    assert again == st
    assert again.phase == COLLECTING and again.devices == ["pump-2", "pump-1"]
    assert again.backing_off(159.0) and not again.backing_off(160.0)
    assert again.cooling_down(100.0, 60.0) and not again.cooling_down(110.0, 60.0)
    again.close_episode()
    again.succeeded()
    assert (again.phase, again.devices, again.failures, again.retry_at) == (IDLE, [], 0, None)


def test_a_database_of_the_first_release_is_brought_along(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE retrain_state (model TEXT PRIMARY KEY, state TEXT NOT NULL, "
        "episode_start REAL, drift_event INTEGER, devices TEXT, note TEXT, last_retrain REAL, "
        "updated_at REAL NOT NULL);"
        "INSERT INTO retrain_state VALUES ('sensor', 'collecting', 10.0, 3, '[\"a\"]', NULL, "
        "NULL, 11.0);"
    )
    old.commit()
    old.close()
    st = RetrainStore(ControlDB(path)).load("sensor")
    assert (st.phase, st.devices, st.failures, st.retry_at, st.last_error) == (
        COLLECTING,
        ["a"],
        0,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("devices", "{broken", "retrain_state.devices of sensor is not valid JSON"),
        ("devices", '{"a": 1}', "retrain_state.devices of sensor must be a list"),
        ("state", "dancing", "retrain_state.state of sensor must be one of"),
    ],
)
def test_a_corrupt_row_is_one_error_naming_the_column(
    tmp_path: Path, column: str, value: str, says: str
) -> None:
    db = ControlDB(tmp_path / "control.sqlite")
    store = RetrainStore(db)
    store.save(RetrainState("sensor"))
    db.conn.execute(f"UPDATE retrain_state SET {column} = ?", (value,))
    with pytest.raises(CorruptColumn, match=says):
        store.load("sensor")
