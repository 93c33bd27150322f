"""The workers of one workspace, and taking over the session of one that went silent.

Every ``edgeloop serve --worker NAME`` writes a heartbeat row each tick. Its broker session
is persistent (nothing sent while it restarts is lost), so the broker goes on handing that
session its share of the shared subscriptions even while the worker is down: Mosquitto
picks among a group's sessions, connected or not. Left alone, a crashed worker's share
would wait for it, and a rollout gated on those devices' telemetry would stall.

So the worker holding the policies lease adopts the session of any worker whose heartbeat
is older than the lease: it connects with that worker's client id (MQTT session takeover),
receives what the broker queued there and what keeps coming, stores and acknowledges it
like its own. When the worker comes back, its own connection takes the session over again
and the adopter's connection ends; it does not reconnect (the two would take turns). A
message the adopter had read but not acknowledged then is redelivered to its owner, and
the stores' keys make that harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import new_client

log = logging.getLogger("edgeloop.control.workers")

SCHEMA = """CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
)"""

SESSION_EXPIRY_S = 7 * 24 * 3600


class Roster:
    """The ``workers`` table: who runs, and when each was last heard of."""

    def __init__(self, db: ControlDB, name: str, client_id: str, now: float) -> None:
        self.db, self.name, self.client_id = db, name, client_id
        db.conn.execute(SCHEMA)
        db.conn.execute(
            "INSERT INTO workers(name, client_id, started_at, heartbeat_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET client_id = excluded.client_id, "
            "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
            (name, client_id, now, now),
        )

    def heartbeat(self, now: float) -> None:
        self.db.conn.execute("UPDATE workers SET heartbeat_at = ? WHERE name = ?", (now, self.name))

    def silent(self, now: float, after_s: float) -> dict[str, str]:
        """Other workers not heard of for ``after_s``: name -> client id."""
        rows = self.db.conn.execute(
            "SELECT name, client_id FROM workers WHERE name != ? AND heartbeat_at < ?",
            (self.name, now - after_s),
        ).fetchall()
        return {str(r["name"]): str(r["client_id"]) for r in rows}


class Adoptions:
    """Sessions of silent workers this worker holds, each on a connection of its own."""

    def __init__(
        self, address: BrokerAddress, deliver: Callable[[mqtt.Client, mqtt.MQTTMessage], None]
    ) -> None:
        self.address = address
        self.deliver = deliver
        self._clients: dict[str, mqtt.Client] = {}
        self._dropped: dict[str, float] = {}  # when an adopted connection ended

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    def follow(self, silent: dict[str, str], now: float, retry_s: float) -> None:
        """Adopt the sessions of ``silent`` workers; let go of those heard of again. A
        connection that ended while its worker stays silent (a broker restart) is made
        again after ``retry_s``."""
        for name in [n for n in self._clients if n not in silent]:
            self._let_go(name)
        for name, client_id in silent.items():
            dropped = self._dropped.get(name)
            if name in self._clients and dropped is not None and now - dropped > retry_s:
                self._let_go(name)
            if name not in self._clients:
                self._adopt(name, client_id)

    def close(self) -> None:
        for name in list(self._clients):
            self._let_go(name)

    def _adopt(self, name: str, client_id: str) -> None:
        log.warning("worker %s is silent: taking over its broker session", name)
        client = new_client(self.address, client_id, manual_ack=True, reconnect=False)
        client.on_message = lambda c, _u, msg: self.deliver(c, msg)

        def on_connect(c: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                log.error("broker refused taking over worker %s's session: %s", name, rc)
            elif not flags.session_present:
                # Nothing was left for it: drop the empty session this connection made.
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
                c.disconnect(properties=props)
            else:
                log.info("took over worker %s's session", name)

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            # Most often the worker came back and took its session over (reason 142).
            log.info("worker %s's session left this worker (%s)", name, rc)
            self._dropped[name] = time.time()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect_async(
            self.address.host, self.address.port, keepalive=30, clean_start=False, properties=props
        )
        client.loop_start()
        self._clients[name] = client

    def _let_go(self, name: str) -> None:
        client = self._clients.pop(name)
        self._dropped.pop(name, None)
        if client.is_connected():
            log.info("worker %s is back: giving its session up", name)
            client.disconnect()
        client.loop_stop()
