"""Desired state is re-signed before it expires: a fleet left alone for a month keeps
verifiable, unexpired documents (the agent refuses an expired one)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgeloop_agent.wire.desired import DesiredState, open_envelope
from edgeloop_agent.wire.signature import load_public_keys
from edgeloop_control.fleet.desired import publish_desired
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
    db = ControlDB(ws.state_db)
    client = ControlClient(broker.url).connect()
    try:
        publish_desired(client, db, "edgeloop", "d1", dict(DOC), signer=signer)
        first = db.desired("d1")[1]
        refresh = DesiredRefresh(ws, db, client, signer=signer, check_every_s=0)
        refresh.tick(time.time())  # fresh: nothing to do
        assert db.desired("d1")[0] == 4
        time.sleep(2.5)
        refresh.tick(time.time())  # more than half of its 4 s gone: re-signed
        revision, doc = db.desired("d1")
        assert revision == 5 and doc["expires"] > first["expires"]
        assert doc["models"][0]["sha256"] == DOC["models"][0]["sha256"]
        assert any(e["kind"] == "desired_refreshed" for e in db.events())

        # What the broker retains is what an agent with the workspace key accepts.
        (msg,) = client.retained("edgeloop/d1/desired")
        opened = open_envelope(
            msg.payload, keys=load_public_keys([ws.public_key_path]), allow_unsigned=False
        )
        state = DesiredState.from_dict(json.loads(opened.payload))
        assert state.revision == 5
    finally:
        client.close()
