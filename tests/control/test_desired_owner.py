"""The one owner of desired state (fleet/desired.py) on a real SQLite file and a real broker:
a device belongs to at most one experiment or rollout, claims are atomic, and nothing but
the owner (and the refresher, which changes no decision) writes an owned device's document."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.fleet.desired import DeployError, DesiredState, DeviceOwned, Owner
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import DesiredSigner, ensure_keypair, open_desired
from edgeloop_control.infra.workspace import Workspace

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines

EXP = Owner("experiment", "ab-sensor-1")
RO = Owner("rollout", "ro-1234abcd")
DOC = {
    "revision": 1,
    "experiment": None,
    "models": [
        {
            "name": "m",
            "version": "v1",
            "sha256": "a" * 64,
            "size": 1234,
            "role": "serve",
            "weight": 100,
            "variant": "m@v1",
        }
    ],
}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    return ws


@pytest.fixture
def db(ws: Workspace) -> Iterator[ControlDB]:
    conn = ControlDB(ws.control_db)
    yield conn
    conn.close()


def test_claim_release_and_idempotent_reclaim(ws: Workspace, db: ControlDB) -> None:
    desired = DesiredState.for_workspace(ws, db, None)
    desired.claim(EXP, ["d1", "d2", "d1"])
    desired.claim(EXP, ["d2", "d3"])  # again, and one more: no error, no duplicate
    assert desired.owners() == {"d1": EXP, "d2": EXP, "d3": EXP}
    assert desired.devices_of(EXP) == ["d1", "d2", "d3"]
    desired.release(RO)  # someone else's release takes nothing
    desired.release(EXP, ["d3"])
    assert desired.owners(["d1", "d3", "d9"]) == {"d1": EXP}
    desired.release(EXP)
    desired.release(EXP)  # idempotent
    assert desired.owners() == {}
    desired.claim(RO, ["d1"])  # free again: anyone may take it
    assert desired.owners() == {"d1": RO}


def test_a_second_owner_is_refused_naming_the_first_and_its_end_command(
    ws: Workspace, db: ControlDB
) -> None:
    desired = DesiredState.for_workspace(ws, db, None)
    desired.claim(EXP, ["d1", "d2"])
    with pytest.raises(DeviceOwned) as info:
        desired.claim(RO, ["d3", "d2"])
    message = str(info.value)
    assert message == (
        "d2 belongs to running experiment ab-sensor-1; wait for it to finish or end it with "
        "`edgeloop ab stop ab-sensor-1`"
    )
    assert info.value.owned == {"d2": EXP}
    # All or nothing: the free device of the refused claim was not taken either.
    assert desired.owners() == {"d1": EXP, "d2": EXP}

    desired.claim(RO, ["d3"])
    with pytest.raises(DeviceOwned) as info:
        desired.check_free(["d1", "d3"])
    assert "\n" not in str(info.value)
    assert "`edgeloop ab stop ab-sensor-1` and `edgeloop rollout abort ro-1234abcd`" in str(
        info.value
    )
    desired.check_free(["d1", "d2"], owner=EXP)  # its own devices: fine


def test_an_unknown_owner_kind_still_gets_a_readable_refusal(ws: Workspace, db: ControlDB) -> None:
    desired = DesiredState.for_workspace(ws, db, None)
    db.conn.execute(
        "INSERT INTO device_owners(device, kind, owner_id, since) VALUES ('d1', 'canary', 'c-1', 0)"
    )
    with pytest.raises(DeviceOwned, match=r"canary c-1.*`edgeloop canary stop c-1`"):
        desired.check_free(["d1"])


def test_racing_claims_from_separate_connections_have_exactly_one_winner(
    ws: Workspace, db: ControlDB
) -> None:
    """Each thread has its own SQLite connection, as the daemon and a CLI command do."""
    DesiredState.for_workspace(ws, db, None)  # creates the table
    contenders = [Owner("experiment", f"ab-sensor-{i}") for i in range(6)]
    contenders += [Owner("rollout", f"ro-{i:08x}") for i in range(6)]
    start = threading.Barrier(len(contenders))
    won: list[Owner] = []
    refused: dict[Owner, str] = {}
    lock = threading.Lock()

    def contend(owner: Owner) -> None:
        own = ControlDB(ws.control_db)
        try:
            desired = DesiredState.for_workspace(ws, own, None)
            start.wait()
            try:
                desired.claim(owner, ["d1", "d2", "d3"])
                with lock:
                    won.append(owner)
            except DeviceOwned as exc:
                with lock:
                    refused[owner] = str(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=contend, args=(o,)) for o in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1, (won, refused)
    (winner,) = won
    assert DesiredState.for_workspace(ws, db, None).owners() == {
        "d1": winner,
        "d2": winner,
        "d3": winner,
    }
    assert len(refused) == len(contenders) - 1
    assert all(str(winner) in message for message in refused.values())


def test_building_the_owner_inside_a_transaction_does_not_commit_it(
    ws: Workspace, db: ControlDB
) -> None:
    with pytest.raises(RuntimeError), db.transaction():
        db.add_event("probe", "must be rolled back")
        DesiredState.for_workspace(ws, db, None)
        raise RuntimeError("the caller fails")
    assert db.events(kind="probe") == []


def test_publishing_without_a_broker_says_so(ws: Workspace, db: ControlDB) -> None:
    desired = DesiredState.for_workspace(ws, db, None)
    with pytest.raises(DeployError, match="needs a broker connection"):
        desired.publish("d1", dict(DOC))
    assert db.desired("d1") is None


def test_only_the_owner_publishes_an_owned_device(
    ws: Workspace, db: ControlDB, broker: PrivateBroker
) -> None:
    client = ControlClient(broker.url).connect()
    try:
        desired = DesiredState.for_workspace(ws, db, client)
        assert desired.publish("d1", dict(DOC))["revision"] == 1  # free device: as before
        desired.claim(EXP, ["d1"])
        with pytest.raises(DeviceOwned, match="ab-sensor-1"):
            desired.publish("d1", {**DOC, "revision": 2})
        with pytest.raises(DeviceOwned):
            desired.publish("d1", {**DOC, "revision": 2}, owner=RO)
        assert (db.desired("d1") or (0,))[0] == 1  # refused: neither sent nor kept
        (msg,) = client.retained(f"{ws.topic_prefix}/d1/desired")
        assert open_desired(msg.payload)["revision"] == 1

        sealed = desired.publish("d1", {**DOC, "revision": 2}, owner=EXP)
        assert sealed["device"] == "d1" and db.desired("d1") == (2, sealed)
        (msg,) = client.retained(f"{ws.topic_prefix}/d1/desired")
        assert open_desired(msg.payload) == sealed

        with pytest.raises(DeployError, match="device id"):
            desired.publish("$SYS", dict(DOC))
    finally:
        client.close()


def test_the_signer_is_loaded_once_and_only_when_publishing(
    ws: Workspace, db: ControlDB, broker: PrivateBroker
) -> None:
    loads: list[DesiredSigner] = []

    def load() -> DesiredSigner:
        loads.append(DesiredSigner.for_workspace(ws))
        return loads[-1]

    client = ControlClient(broker.url).connect()
    try:
        desired = DesiredState(db, client, ws.topic_prefix, load)
        desired.claim(EXP, ["d1"])
        assert loads == []
        desired.publish("d1", dict(DOC), owner=EXP)
        desired.publish("d2", dict(DOC))
        assert len(loads) == 1
    finally:
        client.close()
