"""``edgeloop deploy`` onto a device that a running A/B experiment or rollout owns: refused
with one line naming the owner, unless --force, which ends the owner first.

Real parts throughout: the CLI in-process (typer's runner), a git+DVC registry with real
models, the real ExperimentManager / RolloutManager on the workspace's SQLite, Mosquitto.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from edgeloop_control.cli import app
from edgeloop_control.fleet.desired import DesiredState, Owner
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import open_desired
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry
from tests.integration.models import sensor_model
from tests.pgserver import follow_engine

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with sensor v1..v3 registered (built once, copied per test)."""
    ws = Workspace.init(tmp_path_factory.mktemp("deploy-owned") / "ws")
    registry = Registry.for_workspace(ws)
    for version, seed in (("v1", 0), ("v2", 1), ("v3", 2)):
        registry.register("sensor", sensor_model(version, seed=seed).data, {"algorithm": "logreg"})
    # The devices the tests target are in the inventory, as after their first connection:
    # only known devices may be targeted.
    db = ControlDB(ws.control_db)
    for device in ("d1", "d2", "d3"):
        db.upsert_device(device)
    db.close()
    return ws.root


@dataclass
class Env:
    ws: Workspace
    db: ControlDB
    client: ControlClient
    broker: PrivateBroker

    def deploy(self, *args: str) -> Result:
        return CliRunner().invoke(
            app, ["-w", str(self.ws.root), "--broker", self.broker.url, "deploy", *args]
        )

    def retained(self, device: str) -> dict[str, Any]:
        (msg,) = self.client.retained(f"{self.ws.topic_prefix}/{device}/desired")
        return open_desired(msg.payload)

    @property
    def desired(self) -> DesiredState:
        return DesiredState.for_workspace(self.ws, self.db, None)


@pytest.fixture
def env(template: Path, tmp_path: Path, broker: PrivateBroker) -> Iterator[Env]:
    shutil.copytree(template, tmp_path / "ws", symlinks=True)
    follow_engine(tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        yield Env(ws, db, client, broker)
    finally:
        client.close()
        db.close()


def _variants(doc: dict[str, Any]) -> dict[str, float]:
    return {m["variant"]: m["weight"] for m in doc["models"] if m["role"] == "serve"}


def start_experiment(env: Env, devices: list[str]) -> str:
    from edgeloop_control.policies.experiments import ExperimentManager

    exp_id = str(ExperimentManager(env.ws, env.db, env.client).start(
        "sensor", "v1", "v2", devices, weight=50
    )["id"])  # fmt: skip
    # Until the experiment policy claims at start itself (issue 9, its own branch), claim
    # here through the real API; once it does, this is an idempotent re-claim.
    env.desired.claim(Owner("experiment", exp_id), devices)
    return exp_id


def test_deploy_onto_a_free_device_is_unchanged(env: Env) -> None:
    result = env.deploy("sensor@v1", "--device", "d1", "--json")
    assert result.exit_code == 0, result.output
    (out,) = json.loads(result.stdout)
    assert out["device"] == "d1" and out["revision"] == 1 and out["ended"] is None
    assert _variants(env.retained("d1")) == {"sensor@v1": 100}
    assert [e["kind"] for e in env.db.events()] == ["deploy"]


def test_deploy_onto_a_device_of_a_running_experiment_is_refused_in_one_line(env: Env) -> None:
    assert env.deploy("sensor@v1", "-d", "d1", "-d", "d2").exit_code == 0
    exp_id = start_experiment(env, ["d1"])
    before = env.db.desired("d1")

    result = env.deploy("sensor@v3", "-d", "d2", "-d", "d1")
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line, result.output
    assert line == (
        f"error: d1 belongs to running experiment {exp_id}; wait for it to finish or end it "
        f"with `edgeloop ab stop {exp_id}`; or deploy with --force to end it first"
    )
    # Nothing was deployed, not even to the free device d2.
    assert env.db.desired("d1") == before
    assert _variants(env.retained("d2")) == {"sensor@v1": 100}
    assert env.desired.owners() == {"d1": Owner("experiment", exp_id)}
    from edgeloop_control.policies.experiments import ExperimentManager

    assert ExperimentManager(env.ws, env.db, None).status(exp_id)[0]["state"] == "running"


def test_deploy_force_stops_the_experiment_releases_its_devices_and_deploys(env: Env) -> None:
    assert env.deploy("sensor@v1", "-d", "d1", "-d", "d2").exit_code == 0
    exp_id = start_experiment(env, ["d1", "d2"])
    assert _variants(env.retained("d1")) == {"sensor@v1": 50, "sensor@v2": 50}

    result = env.deploy("sensor@v3", "-d", "d1", "--force", "--json")
    assert result.exit_code == 0, result.output
    (out,) = json.loads(result.stdout)
    ended = {"kind": "experiment", "id": exp_id, "state": "rolled_back", "devices": ["d1", "d2"]}
    assert out["ended"] == ended
    assert _variants(env.retained("d1")) == {"sensor@v3": 100}
    # d2 was not deployed to: the experiment's stop put it back on the champion.
    assert _variants(env.retained("d2")) == {"sensor@v1": 100}
    assert env.desired.owners() == {}

    from edgeloop_control.policies.experiments import ExperimentManager

    status = ExperimentManager(env.ws, env.db, None).status(exp_id)[0]
    assert status["state"] == "rolled_back"
    assert "edgeloop deploy --force" in status["decision"]["reason"]
    (forced,) = env.db.events(kind="deploy_forced")
    assert forced["subject"] == exp_id
    assert forced["message"].startswith(
        f"edgeloop deploy --force ended experiment {exp_id} (rolled_back), which held d1, d2"
    )
    kinds = [e["kind"] for e in reversed(env.db.events())]
    assert kinds.index("deploy_forced") < len(kinds) - 1 and kinds[-1] == "deploy"


def test_stopping_an_experiment_releases_its_devices(env: Env) -> None:
    from edgeloop_control.policies.experiments import ExperimentManager

    assert env.deploy("sensor@v1", "-d", "d1").exit_code == 0
    exp_id = start_experiment(env, ["d1"])
    ExperimentManager(env.ws, env.db, env.client).stop(exp_id, "done")
    assert env.desired.owners() == {}


def test_deploy_force_aborts_a_rollout_and_deploys(env: Env) -> None:
    from edgeloop_control.policies.rollout import RolloutManager

    assert env.deploy("sensor@v1", "-d", "d1", "-d", "d2").exit_code == 0
    rollouts = RolloutManager(env.ws, env.db, env.client)
    rollout_id = str(rollouts.start("sensor@v2", devices=["d1", "d2"])["id"])
    env.desired.claim(Owner("rollout", rollout_id), ["d1", "d2"])  # as start_experiment says

    refused = env.deploy("sensor@v3", "-d", "d2")
    assert refused.exit_code == 1
    assert f"`edgeloop rollout abort {rollout_id}`" in refused.output

    result = env.deploy("sensor@v3", "-d", "d2", "--force", "--json")
    assert result.exit_code == 0, result.output
    (out,) = json.loads(result.stdout)
    assert out["ended"]["id"] == rollout_id and out["ended"]["state"] == "rolled_back"
    assert rollouts.status(rollout_id)[0]["state"] == "rolled_back"
    assert _variants(env.retained("d2")) == {"sensor@v3": 100}
    assert env.desired.owners() == {}
    (forced,) = env.db.events(kind="deploy_forced")
    assert forced["subject"] == rollout_id


def test_a_claim_left_by_an_owner_that_no_longer_exists_does_not_lock_the_device(
    env: Env,
) -> None:
    env.desired.claim(Owner("experiment", "ab-sensor-99"), ["d1"])
    assert env.deploy("sensor@v1", "-d", "d1").exit_code == 1
    result = env.deploy("sensor@v1", "-d", "d1", "--force", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["ended"]["state"] == "gone"
    assert env.desired.owners() == {}
    (forced,) = env.db.events(kind="deploy_forced")
    assert "leftover claim was released" in forced["message"]
