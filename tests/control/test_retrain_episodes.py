"""The retrain policy's tick end to end on real parts: a drift episode opens, waits for labels,
retrains with the real pipeline into the real git+DVC registry, hands a challenger to a real
ExperimentManager (over a real Mosquitto), cools down, and all of it survives a restart.

The fleet's evidence (drift windows, captured samples and labels) is written where the daemon
writes it; the policy is driven by calling ``tick(now)`` with chosen clocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.policies.experiments import ExperimentConfig, ExperimentManager
from edgeloop_control.policies.retrain.store import COLLECTING, EXPERIMENTING, IDLE
from tests.control.retrain_env import (
    CHAMPION,
    MODEL,
    T0,
    RetrainEnv,
    build_template,
    readings,
)

DRIFTING = [(1, 0), (1, 0), (1, 0)]
NOW = T0 + 600


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("retrain") / "ws")


@pytest.fixture
def env(template: Path, tmp_path: Path) -> Iterator[RetrainEnv]:
    env = RetrainEnv.copy_of(template, tmp_path / "ws")
    try:
        yield env
    finally:
        env.close()


def drift_on(env: RetrainEnv, *devices: str, end: float = T0) -> None:
    for device in devices:
        env.serve(device)
        env.windows(device, end, DRIFTING)


def test_without_drift_the_policy_does_nothing(env: RetrainEnv) -> None:
    env.serve("pump-1")
    env.windows("pump-1", T0, [(0, 0), (1, 0), (0, 0)])
    env.capture("pump-1", readings(300, seed=2), start=T0 - 120)
    policy = env.policy(min_samples=100)
    for dt in (0, 1, 60):
        policy.tick(NOW + dt)
    assert env.all_events() == []
    assert policy.state(MODEL).phase == IDLE
    assert [mv.ref for mv in env.registry.list(MODEL)] == [CHAMPION]


def test_only_models_with_a_champion_are_looked_at(env: RetrainEnv) -> None:
    registry = env.registry
    registry.register("spare", registry.artifact_bytes(CHAMPION), {"algorithm": "logreg"})
    assert registry.stages("spare") == {}
    env.serve("pump-1", "spare@v1")
    env.windows("pump-1", T0, DRIFTING, variant="spare@v1")
    env.capture("pump-1", readings(240, seed=14), start=T0 - 100, variant="spare@v1")
    policy = env.policy(min_samples=200)
    policy.tick(NOW)
    assert env.all_events() == []
    assert env.db.conn.execute("SELECT COUNT(*) FROM retrain_state").fetchone()[0] == 0


def test_drift_without_enough_labels_waits_and_says_so_once(env: RetrainEnv) -> None:
    drift_on(env, "pump-1")
    env.capture("pump-1", readings(300, seed=3), start=T0 - 10_000)  # before the drift began
    env.capture("pump-1", readings(40, seed=4), start=T0 - 100)
    policy = env.policy(min_samples=200)
    for dt in (0, 1, 2):
        policy.tick(NOW + dt)
    assert env.all_events() == ["drift_detected", "waiting_for_labels"]
    st = policy.state(MODEL)
    assert st.phase == COLLECTING and st.devices == ["pump-1"]
    assert st.episode_start == T0 - 180
    assert st.note == "waiting for labels: 40 of 200 labelled samples"
    assert env.events("drift_detected")[0]["id"] == st.drift_event


def test_an_open_episode_survives_a_restart_and_retrains_once_labels_arrive(
    env: RetrainEnv,
) -> None:
    drift_on(env, "pump-1")
    env.policy(min_samples=200).tick(NOW)
    assert env.all_events() == ["drift_detected", "waiting_for_labels"]

    env.restart()  # a new daemon: new connection, new policy object
    env.capture("pump-1", readings(240, seed=5), start=T0 - 100)
    policy = env.policy(min_samples=200)
    policy.tick(NOW + 30)
    assert env.all_events() == ["drift_detected", "waiting_for_labels", "retrain", "registered"]
    st = policy.state(MODEL)
    assert st.phase == IDLE and st.last_retrain == NOW + 30 and st.failures == 0
    new = env.registry.get(f"{MODEL}@v2")
    assert new.metadata["trigger"] == "drift"
    assert new.metadata["drift_event"] == env.events("drift_detected")[0]["id"]
    assert new.lineage["parent"] == CHAMPION and new.lineage["devices"] == ["pump-1"]
    retrain = env.events("retrain")[0]
    assert retrain["data"]["recent"] == 240 and retrain["data"]["reference"] == 103


def test_the_cooldown_holds_across_a_restart(env: RetrainEnv) -> None:
    drift_on(env, "pump-1")
    env.capture("pump-1", readings(240, seed=6), start=T0 - 100)
    env.policy(min_samples=200, cooldown_s=600).tick(NOW)
    assert len(env.events("registered")) == 1

    # The world keeps drifting; the champion is still v1 (no experiment was started).
    env.windows("pump-1", NOW + 300, DRIFTING)
    env.restart()
    policy = env.policy(min_samples=200, cooldown_s=600)
    for dt in (1, 300, 599):
        policy.tick(NOW + dt)
    assert len(env.events("drift_detected")) == 1 and policy.state(MODEL).phase == IDLE
    policy.tick(NOW + 600)
    assert len(env.events("drift_detected")) == 2
    assert policy.state(MODEL).phase == COLLECTING


@pytest.mark.parametrize(("scope", "waiting"), [("device", True), ("fleet", False)])
def test_only_the_scopes_samples_count(env: RetrainEnv, scope: str, waiting: bool) -> None:
    drift_on(env, "pump-1")
    env.serve("pump-2")  # runs the champion, shows no drift
    env.capture("pump-1", readings(120, seed=7), start=T0 - 100)
    env.capture("pump-2", readings(120, seed=8), start=T0 - 100)
    policy = env.policy(min_samples=200, scope=scope)
    policy.tick(NOW)
    st = policy.state(MODEL)
    if waiting:
        assert st.devices == ["pump-1"] and st.phase == COLLECTING
        assert st.note == "waiting for labels: 120 of 200 labelled samples"
        assert not env.events("registered")
    else:
        assert env.registry.get(f"{MODEL}@v2").lineage["devices"] == ["pump-1", "pump-2"]
        assert env.events("retrain")[0]["data"]["recent"] == 240


def test_a_failure_backs_off_and_a_later_success_clears_it(env: RetrainEnv) -> None:
    drift_on(env, "pump-1")
    env.capture("pump-1", readings(200, seed=9, single_class=True), start=T0 - 100)
    policy = env.policy(min_samples=200, reference_share=0, retry_base_s=60, retry_max_s=600)
    policy.tick(NOW)
    st = policy.state(MODEL)
    assert (st.failures, st.retry_at, st.phase) == (1, NOW + 60, COLLECTING)
    assert "single class" in (st.last_error or "")

    env.capture("pump-1", readings(200, seed=10), start=T0 - 50)  # both classes now
    policy.tick(NOW + 59)  # still backing off
    assert not env.events("registered")
    policy.tick(NOW + 60)
    st = policy.state(MODEL)
    assert (st.failures, st.retry_at, st.last_error, st.phase) == (0, None, None, IDLE)
    assert len(env.events("registered")) == 1
    assert len(env.events("retrain")) == 1  # the retry was not announced again
    assert len(env.events("retrain_failed")) == 1


def test_a_corrupt_state_row_is_reported_once_and_started_over(env: RetrainEnv) -> None:
    drift_on(env, "pump-1")
    policy = env.policy(min_samples=200, retry_base_s=30)
    policy.tick(NOW)
    env.db.conn.execute("UPDATE retrain_state SET devices = '{broken'")
    for dt in (1, 2, 3):
        policy.tick(NOW + dt)
    [failed] = env.events("retrain_failed")
    assert "retrain_state.devices of sensor is not valid JSON" in failed["message"]
    st = policy.state(MODEL)
    assert st.phase == IDLE and st.failures == 1 and st.retry_at == NOW + 31
    policy.tick(NOW + 31)  # the evidence is still there: a fresh episode opens
    assert len(env.events("drift_detected")) == 2 and policy.state(MODEL).phase == COLLECTING


def test_switched_off_it_never_acts(env: RetrainEnv) -> None:
    drift_on(env, "pump-1")
    env.capture("pump-1", readings(240, seed=11), start=T0 - 100)
    env.policy(enabled=False, min_samples=200).tick(NOW)
    assert env.all_events() == []


# -- hand-off to the A/B experiment policy ------------------------------------------------------


@pytest.fixture
def client(broker: PrivateBroker) -> Iterator[ControlClient]:
    client = ControlClient(broker.url).connect()
    try:
        yield client
    finally:
        client.close()


def test_a_challenger_goes_into_an_experiment_on_the_episodes_devices(
    env: RetrainEnv, client: ControlClient
) -> None:
    experiments = ExperimentManager(env.ws, env.db, client, config=ExperimentConfig())
    drift_on(env, "pump-1", "pump-2")
    env.capture("pump-1", readings(240, seed=12, flipped=True), start=T0 - 100)
    policy = env.policy(experiments, min_samples=200, cooldown_s=600)
    policy.tick(NOW)
    [registered] = env.events("registered")
    assert registered["data"]["stage"] == "challenger", registered["message"]
    [running] = experiments.running_for(MODEL)
    st = policy.state(MODEL)
    assert st.phase == EXPERIMENTING and st.note == f"experiment {running['id']}"
    assert sorted(running["devices"]) == ["pump-1", "pump-2"]
    assert "drift_event" in (running.get("cause") or "")

    policy.tick(NOW + 120)  # the experiment runs: the policy stays out of the way
    assert policy.state(MODEL).phase == EXPERIMENTING
    experiments.stop(running["id"], "test over")
    policy.tick(NOW + 121)
    st = policy.state(MODEL)
    assert st.phase == IDLE and st.devices == [] and st.drift_event is None
    # The drift windows are still there, but the cooldown keeps a new episode away.
    assert len(env.events("drift_detected")) == 1


def test_a_challenger_that_cannot_be_tested_is_reported_and_cools_down(
    env: RetrainEnv, client: ControlClient
) -> None:
    experiments = ExperimentManager(env.ws, env.db, client, config=ExperimentConfig())
    drift_on(env, "pump-1")
    # The device serves a second model too: an experiment would replace it, so it is refused.
    desired = env.db.desired("pump-1")
    assert desired is not None
    doc = desired[1]
    doc["models"].append({"name": "other", "variant": "other@v1", "role": "serve", "weight": 100})
    env.db.set_desired("pump-1", doc)
    env.capture("pump-1", readings(240, seed=13, flipped=True), start=T0 - 100)
    policy = env.policy(experiments, min_samples=200, cooldown_s=600)
    policy.tick(NOW)
    [refused] = env.events("ab_not_started")
    assert refused["message"].startswith(f"{MODEL}@v2 not A/B tested: device pump-1 serves other")
    st = policy.state(MODEL)
    assert st.phase == IDLE and st.last_retrain == NOW and "serves other" in (st.note or "")
    assert experiments.running_for(MODEL) == []
