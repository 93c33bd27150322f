"""The experiment policy on the one owner of desired state, and its typed store.

Same real parts as test_experiments.py (SQLite, a git+DVC registry, Mosquitto): an
experiment owns its devices from the start's transaction until it is decided, stopped or
fails to start; experiments from before the ownership table claim theirs at the next tick;
the store hands out typed experiments and names a corrupt column.
"""

from __future__ import annotations

import logging
import time

import pytest

from edgeloop_control.fleet.desired import DesiredState, Owner
from edgeloop_control.infra.jsoncolumn import CorruptColumn
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import DesiredSigner
from edgeloop_control.policies.experiments import (
    ExperimentConfig,
    ExperimentConfigError,
    ExperimentError,
    ExperimentManager,
    ExperimentStore,
    Step,
    StepKind,
)
from edgeloop_control.policies.experiments.store import steps_for
from tests.control import test_experiments as base
from tests.control.test_experiments import CHALL, CHAMP, Device, Env, warm_up

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines

template = base.template
env = base.env


def owners(env: Env) -> DesiredState:
    return DesiredState(env.db, env.client, "edgeloop", DesiredSigner.for_workspace(env.ws))


def decide_promote(env: Env, exp_id: str) -> None:
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 300, labelled=300, correct=200)
    d1.serve(CHALL, 300, labelled=300, correct=280)
    d1.report(env.db, exp_id)


def test_devices_are_owned_while_running_and_released_by_the_decision(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"], weight="50%")["id"]
    me = Owner("experiment", exp_id)
    assert owners(env).owners() == {"d1": me}
    assert m.status(exp_id)[0]["weights"] == {"champion": 50.0, "challenger": 50.0}
    decide_promote(env, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "promoted" and st["pending"] == ["rollout"]
    # Released before the rollout step, so the rollout can claim the devices itself.
    assert owners(env).owners() == {}


def test_a_failed_start_releases_its_devices(env: Env) -> None:
    m = env.manager()
    m.publisher = ControlClient(env.broker.url)  # never connected: every publish fails
    with pytest.raises(ExperimentError, match=r"could not start ab-sensor-1: .*returned to"):
        m.start("sensor", "v1", "v2", ["d1", "d2"])
    assert owners(env).owners() == {}
    [st] = m.status("ab-sensor-1")
    assert st["state"] in ("rolling_back", "rolled_back")
    assert [e["kind"] for e in env.db.events(kind="ab_failed")] == ["ab_failed"]
    # The devices are free for the next attempt.
    m.publisher = env.client
    assert m.start("sensor", "v1", "v2", ["d1", "d2"])["id"] == "ab-sensor-2"


def test_running_experiments_from_before_the_owner_table_claim_at_tick(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    m = env.manager()
    first = m.start("sensor", "v1", "v2", ["d1"])["id"]
    second = m.start("sensor", "v1", "v3", ["d2"])["id"]
    # As in a database written before device_owners existed.
    env.db.conn.execute("DELETE FROM device_owners")
    # Meanwhile a rollout took d2 (an old database could hold both).
    owners(env).claim(Owner("rollout", "r-old"), ["d2"])
    caplog.set_level(logging.WARNING, logger="edgeloop.control.experiments")
    m.tick(time.time())
    m.tick(time.time())
    assert owners(env).owners() == {
        "d1": Owner("experiment", first),
        "d2": Owner("rollout", "r-old"),
    }
    warned = [r.getMessage() for r in caplog.records if "cannot claim" in r.getMessage()]
    assert warned == [
        f"{second} cannot claim its devices: d2 belongs to running rollout r-old; wait for it "
        f"to finish or end it with `edgeloop rollout abort r-old`"
    ]
    # Its look still runs: one experiment's trouble does not stop the policy.
    assert m.status(second)[0]["state"] == "running"


def test_the_store_is_typed_and_keeps_percent_in_its_weight_column(env: Env) -> None:
    m = env.manager(challenger_weight="20%")
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    store = ExperimentStore(env.db)
    exp = store.get(exp_id)
    assert (exp.share, exp.weight_percent, exp.config.challenger_weight) == (0.2, 20.0, 0.2)
    row = env.db.conn.execute(
        "SELECT weight, config FROM experiments WHERE id = ?", (exp_id,)
    ).fetchone()
    assert row["weight"] == 20.0 and '"challenger_weight":20.0' in row["config"]
    # A stored config is percent by definition: 1 is 1 %, not 100 %.
    legacy = row["config"].replace('"challenger_weight":20.0', '"challenger_weight":1')
    env.db.conn.execute("UPDATE experiments SET config = ? WHERE id = ?", (legacy, exp_id))
    assert store.get(exp_id).config.challenger_weight == 0.01
    env.db.conn.execute("UPDATE experiments SET totals = '{oops' WHERE id = ?", (exp_id,))
    with pytest.raises(CorruptColumn, match=f"experiments.totals of {exp_id} is not valid JSON"):
        store.get(exp_id)


def test_pending_steps_are_typed_and_stored_as_before() -> None:
    steps = steps_for("rollback", ["d1", "d2"])
    assert [str(s) for s in steps] == ["desired:d1", "desired:d2", "registry"]
    assert [Step.parse(str(s)) for s in steps] == steps
    assert steps_for("promote", ["d1"]) == [Step(StepKind.REGISTRY), Step(StepKind.ROLLOUT)]
    with pytest.raises(ValueError):
        Step.parse("reboot:d1")


@pytest.mark.parametrize(
    ("weight", "share"), [("10%", 0.1), (0.1, 0.1), (10, 0.1), ("50", 0.5), (99.5, 0.995)]
)
def test_challenger_weight_is_one_share_style(weight: object, share: float) -> None:
    assert ExperimentConfig(challenger_weight=weight).challenger_weight == pytest.approx(share)  # type: ignore[arg-type]


@pytest.mark.parametrize("weight", [0, "0%", 100, "100%", 1, "lots", True])
def test_bad_challenger_weight_is_a_config_error(weight: object) -> None:
    with pytest.raises(ExperimentConfigError, match=r"experiment\.challenger_weight must be"):
        ExperimentConfig(challenger_weight=weight)  # type: ignore[arg-type]


def test_read_only_manager_needs_no_broker_or_key(env: Env) -> None:
    exp_id = env.manager().start("sensor", "v1", "v2", ["d1"])["id"]
    reader = ExperimentManager(env.ws, env.db, None)
    assert [e["id"] for e in reader.status()] == [exp_id]
    with pytest.raises(ExperimentError, match="no MQTT publisher"):
        reader.start("sensor", "v1", "v3", ["d2"])
