"""A rollout as an owner of desired state (fleet/desired.py), its typed store and its feed.

Real SQLite, a real registry and a real Mosquitto, as in test_rollout.py (whose
workspace template and simulated device reports these tests reuse).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.fleet.desired import DesiredState, DeviceOwned, Owner
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.jsoncolumn import CorruptColumn
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import DesiredSigner
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout import Member, Rollout, RolloutError, RolloutManager
from edgeloop_control.policies.rollout.feed import BrokerFeed
from tests.control.test_rollout import (
    FAST,
    build_template,
    connected_client,
    copy_workspace,
    load,
    report,
    seed,
    status,
)

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("rollout-owner-template"))


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    return copy_workspace(template, tmp_path / "ws")


@pytest.fixture
def db(ws: Workspace) -> Iterator[ControlDB]:
    conn = ControlDB(ws.control_db)
    yield conn
    conn.close()


@pytest.fixture
def client(broker: PrivateBroker) -> Iterator[ControlClient]:
    c = ControlClient(broker.url).connect()
    yield c
    c.close()


def desired_state(ws: Workspace, db: ControlDB, client: ControlClient) -> DesiredState:
    return DesiredState(db, client, ws.topic_prefix, lambda: DesiredSigner.for_workspace(ws))


def rollout_owner(rollout_id: str) -> Owner:
    return Owner("rollout", rollout_id)


def test_a_device_in_a_running_experiment_is_refused_naming_the_experiment(
    ws: Workspace, db: ControlDB, client: ControlClient
) -> None:
    seed(ws, db, ["a", "b"])
    owners = desired_state(ws, db, client)
    # What `edgeloop ab start` records for its devices (fleet/desired.py claim).
    experiment = Owner("experiment", "ab-sensor-1")
    owners.claim(experiment, ["b"])
    manager = RolloutManager(ws, db, None, config=FAST)
    with pytest.raises(
        RolloutError,
        match=r"^b already in running experiment ab-sensor-1; wait for it to finish or stop "
        r"it with `edgeloop ab stop ab-sensor-1`$",
    ):
        manager.start("sensor@v2")  # every device with desired state: a and b
    # Refused as a whole: nothing recorded, a not claimed either.
    assert manager.status() == []
    assert owners.owners() == {"b": experiment}
    info = manager.start("sensor@v2", devices=["a"])
    assert owners.owners() == {"a": rollout_owner(info["id"]), "b": experiment}
    # And the other way round: the experiment cannot take the rollout's device.
    with pytest.raises(DeviceOwned, match=f"rollout {info['id']}"):
        owners.claim(Owner("experiment", "ab-sensor-2"), ["a"])


def test_devices_are_owned_until_the_rollout_completes(
    ws: Workspace, db: ControlDB, client: ControlClient
) -> None:
    seed(ws, db, ["a", "b"])
    owners = desired_state(ws, db, client)
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=0.5, step=0.5)["id"]
    assert owners.owners() == dict.fromkeys("ab", rollout_owner(rid))
    manager.tick()
    # A one-off write (an `edgeloop deploy` without --force) is refused meanwhile.
    current = db.desired("b")
    assert current is not None
    with pytest.raises(DeviceOwned, match=f"rollout {rid}; .*`edgeloop rollout abort {rid}`"):
        owners.publish("b", current[1])
    load(db, "a", 2)
    manager.tick()
    load(db, "b", 2)
    manager.tick()
    assert manager.status(rid)[0]["state"] == "completed"
    assert owners.owners() == {}
    # A restarted control node does not claim a finished rollout's devices again.
    RolloutManager(ws, db, client, config=FAST).tick()
    assert owners.owners() == {}


def test_abort_releases_the_devices_once_rolled_back(
    ws: Workspace, db: ControlDB, client: ControlClient
) -> None:
    seed(ws, db, ["a", "b"])
    owners = desired_state(ws, db, client)
    rid = RolloutManager(ws, db, client, config=FAST).start("sensor@v2", canary=0.5)["id"]
    RolloutManager(ws, db, client, config=FAST).tick()
    # Without a broker connection (the dashboard): recorded, the rollback still to send,
    # so the devices stay the rollout's until it is.
    info = RolloutManager(ws, db, None, config=FAST).abort(rid, "from the dashboard")
    assert info["state"] == "rolling_back"
    assert owners.owners() == dict.fromkeys("ab", rollout_owner(rid))
    RolloutManager(ws, db, client, config=FAST).tick()
    assert RolloutManager(ws, db, None, config=FAST).status(rid)[0]["state"] == "rolled_back"
    assert owners.owners() == {}
    # With a connection (`edgeloop rollout abort`, `edgeloop deploy --force`): released
    # by the time abort returns.
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=1.0)["id"]
    manager.tick()
    assert manager.abort(rid)["state"] == "rolled_back"
    assert owners.owners() == {}
    # a: r2 target, r3 rollback, r4 target, r5 rollback; b: r2 target, r3 rollback.
    assert [db.desired(d)[0] for d in "ab"] == [5, 3]


def test_a_rollout_older_than_the_ownership_table_is_claimed_at_tick(
    ws: Workspace, db: ControlDB, client: ControlClient
) -> None:
    seed(ws, db, ["a", "b", "c"])
    owners = desired_state(ws, db, client)
    rid = RolloutManager(ws, db, None, config=FAST).start("sensor@v2", devices=["a", "b"])["id"]
    # As if recorded before device_owners existed (an upgrade with a rollout under way).
    db.conn.execute("DELETE FROM device_owners")
    RolloutManager(ws, db, client, config=FAST).tick()
    assert owners.owners() == dict.fromkeys("ab", rollout_owner(rid))
    assert db.desired("a")[0] == 2  # and it went on with its canary
    # Claimed in place: the same claim again changes nothing (idempotent).
    RolloutManager(ws, db, client, config=FAST).tick()
    assert owners.owners() == dict.fromkeys("ab", rollout_owner(rid))


def test_a_legacy_rollout_whose_device_was_taken_says_so_and_leaves_it_alone(
    ws: Workspace, db: ControlDB, client: ControlClient
) -> None:
    seed(ws, db, ["a"])
    owners = desired_state(ws, db, client)
    rid = RolloutManager(ws, db, None, config=FAST).start("sensor@v2")["id"]
    db.conn.execute("DELETE FROM device_owners")
    owners.claim(Owner("experiment", "ab-sensor-9"), ["a"])
    manager = RolloutManager(ws, db, client, config=FAST)
    manager.tick()
    info = manager.status(rid)[0]
    assert info["state"] == "running"
    assert "a belongs to running experiment ab-sensor-9" in info["last_error"]
    assert db.desired("a")[0] == 1  # the experiment's device was not written
    assert owners.owners() == {"a": Owner("experiment", "ab-sensor-9")}


# -- the typed store ------------------------------------------------------------------------------


def test_store_rows_are_typed(ws: Workspace, db: ControlDB, client: ControlClient) -> None:
    docs = seed(ws, db, ["a", "b"])
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=0.5, reason="typed")["id"]
    manager.tick()
    r = manager.store.rollout(rid)
    assert isinstance(r, Rollout)
    assert (r.target.variant, r.state, r.reason, r.n_batches, r.current_batch) == (
        "sensor@v2",
        "running",
        "typed",
        2,
        0,
    )
    assert r.config == FAST.with_overrides(canary=0.5).to_dict()
    a, b = manager.store.devices(rid)
    assert isinstance(a, Member)
    assert (a.device, a.batch, a.target_revision, a.seen_online, a.online_at_publish) == (
        "a",
        0,
        2,
        True,
        True,
    )
    assert a.previous_doc == docs["a"] and a.target_doc is not None
    assert (b.target_doc, b.published_at, b.seen_online, b.online_at_publish) == (
        None,
        None,
        False,
        None,
    )
    [first, second] = manager.store.batches(rid)
    assert first.published_at is not None and second.started_at is None


def test_a_corrupt_row_is_named_and_does_not_stall_the_other_rollouts(
    ws: Workspace, db: ControlDB, client: ControlClient
) -> None:
    seed(ws, db, ["a", "b"])
    manager = RolloutManager(ws, db, client, config=FAST)
    broken = manager.start("sensor@v2", devices=["a"])["id"]
    healthy = manager.start("sensor@v2", devices=["b"])["id"]
    db.conn.execute("UPDATE rollouts SET config = '{oops' WHERE id = ?", (broken,))
    manager.tick()
    assert db.desired("b")[0] == 2  # the healthy rollout moved on
    assert db.desired("a")[0] == 1
    last_error = manager.store.last_error(broken)
    assert last_error is not None
    assert last_error.startswith(f"rollouts.config of {broken} is not valid JSON")
    with pytest.raises(CorruptColumn, match=f"rollouts.config of {broken}"):
        manager.status(broken)
    assert manager.status(healthy)[0]["state"] == "running"


# -- the feed of `edgeloop rollout start --wait` ------------------------------------------------


def test_feed_stores_through_the_fleet_layer_and_survives_junk(
    ws: Workspace, db: ControlDB, client: ControlClient, broker: PrivateBroker
) -> None:
    feed = BrokerFeed(client, db, ws.topic_prefix)
    time.sleep(0.3)  # let the subscriptions land
    good = report("a", 1, "sensor@v1", ts=time.time())
    sent = [
        ("edgeloop/a/status", json.dumps(status("a", 1, "v1")).encode()),
        ("edgeloop/a/telemetry", json.dumps(good).encode()),
        ("edgeloop/a/telemetry", json.dumps(good).encode()),  # redelivered: stored once
        ("edgeloop/b/status", b"{not json"),
        ("edgeloop/c/status", json.dumps(status("someone-else", 1, "v1")).encode()),
        ("edgeloop/d/telemetry", json.dumps({"payload": "no envelope"}).encode()),
        ("edgeloop/e/status", json.dumps({"device": "e", "online": "yes"}).encode()),
    ]
    with connected_client(broker.url) as sender:
        for topic, payload in sent:
            sender.publish(topic, payload)
    handled = 0
    deadline = time.monotonic() + 10
    while handled < len(sent) and time.monotonic() < deadline:
        handled += feed.pump()
        time.sleep(0.05)
    assert handled == len(sent)
    device = db.device("a")
    assert device is not None and device["online"] and device["telemetry"]["revision"] == 1
    rows = db.conn.execute("SELECT COUNT(*) FROM variant_stats WHERE device = 'a'").fetchone()
    assert rows[0] == 1
    assert [db.device(d) for d in "bcde"] == [None] * 4


def test_reading_status_needs_no_write_access(ws: Workspace, db: ControlDB) -> None:
    """The dashboard reads rollouts through a read-only connection (mode=ro): a manager
    made only to read must not create the ownership table on the way."""
    from edgeloop_control.infra import sql
    from edgeloop_control.policies.rollout.store import RolloutStore
    from edgeloop_control.web.readdb import open_readonly

    RolloutStore(db)  # rollouts recorded by a version older than device_owners
    assert not sql.has_table(db.conn, "device_owners")
    ro = open_readonly(ws.control_db)
    try:
        assert RolloutManager(ws, ro, None, config=FAST).status() == []
    finally:
        ro.close()
