"""Desired state is re-signed before it expires: a fleet left alone for a month keeps
verifiable, unexpired documents (the agent refuses an expired one)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edgeloop_agent.wire.desired import DesiredState, open_envelope
from edgeloop_agent.wire.signature import load_public_keys
from edgeloop_control.fleet.desired import DesiredState as Desired
from edgeloop_control.fleet.desired import Owner
from edgeloop_control.fleet.refresh import DesiredRefresh
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.signing import DesiredSigner, ensure_keypair, load_signing_key
from edgeloop_control.infra.workspace import Workspace

DOC = {
    "revision": 4,
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


def test_documents_past_half_their_lifetime_are_resigned_with_the_next_revision(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    signer = DesiredSigner([load_signing_key(ws.signing_key_path)], ttl_s=4.0)
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        desired = Desired(db, client, "edgeloop", signer)
        desired.publish("d1", dict(DOC))
        first = db.desired("d1")[1]
        # d1 belongs to a running experiment: the refresher re-signs it all the same
        # (it keeps the experiment's document alive, it changes no decision).
        desired.claim(Owner("experiment", "ab-m-1"), ["d1"])
        refresh = DesiredRefresh(desired, check_every_s=0)
        refresh.tick(time.time())  # fresh: nothing to do
        assert db.desired("d1")[0] == 4
        time.sleep(2.5)
        refresh.tick(time.time())  # more than half of its 4 s gone: re-signed
        revision, doc = db.desired("d1")
        assert revision == 5 and doc["expires"] > first["expires"]
        assert doc["models"][0]["sha256"] == DOC["models"][0]["sha256"]
        assert any(e["kind"] == "desired_refreshed" for e in db.events())
        assert desired.owners() == {"d1": Owner("experiment", "ab-m-1")}

        # What the broker retains is what an agent with the workspace key accepts.
        (msg,) = client.retained("edgeloop/d1/desired")
        opened = open_envelope(
            msg.payload, keys=load_public_keys([ws.public_key_path]), allow_unsigned=False
        )
        state = DesiredState.from_dict(json.loads(opened.payload))
        assert state.revision == 5
    finally:
        client.close()
        db.close()


def test_a_document_replaced_while_the_refresher_read_it_is_left_alone(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    signer = DesiredSigner([load_signing_key(ws.signing_key_path)], ttl_s=3600.0)
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        desired = Desired(db, client, "edgeloop", signer)
        stale = desired.publish("d1", dict(DOC))
        newer = desired.publish("d1", {**DOC, "revision": 5})
        # The refresher read revision 4; a deploy published revision 5 since.
        assert desired.republish("d1", stale) is None
        assert db.desired("d1") == (5, newer)
        again = desired.republish("d1", newer)
        assert again is not None and again["revision"] == 6
    finally:
        client.close()
        db.close()


def test_a_broker_that_does_not_acknowledge_is_retried_at_the_next_check(
    broker: PrivateBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ensure_keypair(ws.signing_key_path, ws.public_key_path)
    signer = DesiredSigner([load_signing_key(ws.signing_key_path)], ttl_s=3600.0)
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        Desired(db, client, "edgeloop", signer).publish("d1", dict(DOC))
    finally:
        client.close()
    # A publisher whose session is gone: the publish raises BrokerError (not an OSError).
    dead = ControlClient(broker.url).connect()
    dead.close()
    # With a lifetime this long every document is past half of it: due now.
    eager = DesiredSigner([load_signing_key(ws.signing_key_path)], ttl_s=1e9)
    refresh = DesiredRefresh(Desired(db, dead, "edgeloop", eager), check_every_s=0)
    try:
        with caplog.at_level(logging.WARNING, logger="edgeloop.control.desired"):
            refresh.tick(time.time())
            refresh.tick(time.time())
        warnings = [r for r in caplog.records if "will retry" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert (db.desired("d1") or (0,))[0] == 4  # nothing recorded that was not published
    finally:
        db.close()
