"""RolloutManager on a real SQLite database, a real registry and a real broker.

Device reports are fed through the daemon's own ingestion functions
(``handle_status``, ``handle_report``), so the manager reads exactly what it
reads in production; tests/integration/test_rollout_e2e.py runs real agents.
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.errors import ConfigError
from edgeloop_control.fleet.desired import plan_desired
from edgeloop_control.fleet.ingest import handle_report, handle_status
from edgeloop_control.fleet.inventory import register
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.shares import parse_share
from edgeloop_control.infra.signing import open_desired
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.rollout import (
    RolloutConfig,
    RolloutError,
    RolloutManager,
    batch_sizes,
    parse_gates,
    report_view,
    split_batches,
)
from edgeloop_control.policies.rollout.plan import rollback_doc
from edgeloop_control.registry import Registry
from edgeloop_control.report import parse_report
from tests.integration.models import sensor_model
from tests.integration.signed import unsealed
from tests.mqtt_helpers import Probe
from tests.pgserver import follow_engine

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines

FAST = RolloutConfig(soak_s=1.0, batch_timeout_s=30.0)


# -- workspace with a real registry (built once per module, copied per test) ------------------


def build_template(
    root: Path, versions: tuple[tuple[str, str], ...] = (("v1", "logreg"), ("v2", "rf"))
) -> Path:
    ws = Workspace.init(root / "ws")
    registry = Registry.for_workspace(ws)
    for version, algo in versions:
        registry.register("sensor", sensor_model(version, algo=algo).data, {"algorithm": algo})
    return ws.root


def copy_workspace(template: Path, dest: Path) -> Workspace:
    shutil.copytree(template, dest, symlinks=True)
    follow_engine(dest)
    return Workspace.open(dest)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("rollout-template"))


@pytest.fixture
def ws(template: Path, tmp_path: Path) -> Workspace:
    return copy_workspace(template, tmp_path / "ws")


@pytest.fixture
def db(ws: Workspace):
    conn = ControlDB(ws.control_db)
    yield conn
    conn.close()


@pytest.fixture
def client(broker):
    c = ControlClient(broker.url).connect()
    yield c
    c.close()


# -- simulated device reports, through the real ingestion -------------------------------------


def status(device: str, revision: int, version: str, **extra: Any) -> dict[str, Any]:
    return {
        "device": device,
        "online": True,
        "state": "serving",
        "revision": revision,
        "models": [
            {
                "name": "sensor",
                "version": version,
                "role": "serve",
                "weight": 100.0,
                "variant": f"sensor@{version}",
            }
        ],
        "error": None,
        "started_at": 1000.0,
        "ts": time.time(),
        **extra,
    }


def report(
    device: str,
    revision: int,
    variant: str,
    *,
    ts: float,
    requests: int = 20,
    errors: int = 0,
    latency_s: float = 0.001,
) -> dict[str, Any]:
    hist = LatencyHistogram()
    for _ in range(requests):
        hist.record(latency_s)
    rid = uuid.uuid4().hex
    name, version = variant.split("@")
    return {
        "id": rid,
        "payload": {
            "report_id": rid,
            "device": device,
            "ts": ts,
            "revision": revision,
            "variants": {variant: {"name": name, "version": version, "role": "serve"}},
            "metrics": {
                "variants": {
                    variant: {
                        "requests": requests,
                        "predictions": requests - errors,
                        "errors": {"inference_failed": errors} if errors else {},
                        "latency": hist.to_dict(),
                    }
                }
            },
        },
    }


def seed(
    ws: Workspace, db: ControlDB, devices: list[str], *, offline: tuple[str, ...] = ()
) -> dict:
    """Devices serving sensor@v1 at revision 1 (desired state and status)."""
    v1 = Registry.for_workspace(ws, create=False).get("sensor@v1")
    docs = {}
    for device in devices:
        doc = plan_desired(None, [(v1, 100.0)], [])
        db.set_desired(device, doc)
        docs[device] = doc
        if device in offline:
            handle_status(db, device, {"device": device, "online": False, "reason": "stopped"})
        else:
            handle_status(db, device, status(device, 1, "v1"))
    return docs


def load(
    db: ControlDB, device: str, revision: int, *, soak_s: float = 1.0, **report_kw: Any
) -> None:
    """The device reports the target loaded, then telemetry covering the soak."""
    doc = status(device, revision, "v2")
    handle_status(db, device, doc)
    handle_report(
        db, report(device, revision, "sensor@v2", ts=doc["ts"] + soak_s + 0.1, **report_kw)
    )


def steps(db: ControlDB, rollout_id: str) -> list[str]:
    return [
        e["data"]["step"]
        for e in db.events(limit=100_000)
        if e["kind"].startswith("rollout_") and e["subject"] == rollout_id
    ]


def drain(probe: Probe, wait: float = 0.5) -> list[tuple[str, Any]]:
    out = []
    deadline = time.monotonic() + wait
    while True:
        try:
            msg = probe.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return out
        payload = open_desired(msg.payload) if "/models/" not in msg.topic else len(msg.payload)
        out.append((msg.topic, payload))


# -- batching arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "canary", "step", "sizes"),
    [
        (1, 0.1, 0.25, [1]),
        (3, 0.1, 0.25, [1, 1, 1]),
        (3, 0.34, 0.34, [2, 1]),
        (3, 0.33, 0.33, [1, 1, 1]),
        (3, 1.0, 0.25, [3]),
        (10, 0.1, 0.25, [1, 3, 3, 3]),
        (10, 0.7, 0.25, [7, 3]),  # 0.7 * 10 is 7.000000000000001 in floating point
        (10, 0.2, 0.5, [2, 5, 3]),
        (10, 0.05, 0.1, [1] + [1] * 9),
        (0, 0.1, 0.25, []),
    ],
)
def test_batch_sizes(n: int, canary: float, step: float, sizes: list[int]) -> None:
    assert batch_sizes(n, canary, step) == sizes


def test_batches_cover_every_device_once_in_order() -> None:
    for n in range(1, 41):
        devices = [f"d{i}" for i in range(n)]
        for canary in (0.01, 0.1, 0.34, 0.5, 1.0):
            for step in (0.1, 0.25, 0.34, 1.0):
                batches = split_batches(devices, canary, step)
                assert [d for b in batches for d in b] == devices
                assert len(batches[0]) == min(n, max(1, math.ceil(round(canary * n, 9))))
                assert all(len(b) >= 1 for b in batches)


def test_shares_and_gates_parse() -> None:
    assert parse_share("10%") == pytest.approx(0.1)
    assert parse_share("0.1") == pytest.approx(0.1)
    assert parse_share(25) == pytest.approx(0.25)  # above 1 means percent
    assert parse_share("100%") == 1.0
    for bad in ("0", "150%", "abc", "-5%", "nan"):
        with pytest.raises(ConfigError):
            parse_share(bad)
    assert parse_gates(["error_rate=2%", "p99_ms=80", "restarts=1", "min_requests=5"]) == {
        "error_rate": pytest.approx(0.02),
        "p99_ms": 80.0,
        "restarts": 1,
        "min_requests": 5,
    }
    for bad in (["latency=3"], ["error_rate"], ["restarts=1.5"], ["p99_ms=fast"]):
        with pytest.raises(ConfigError):
            parse_gates(bad)
    cfg = RolloutConfig().with_overrides(canary="20%", gates={"p99_ms": 80}, batch_timeout_s=60)
    assert (cfg.canary, cfg.max_p99_ms, cfg.batch_timeout_s, cfg.step) == (0.2, 80.0, 60, 0.25)
    # Validated at construction: no RolloutConfig exists that no batch could pass.
    with pytest.raises(ConfigError, match="soak_s"):
        RolloutConfig(soak_s=200)
    with pytest.raises(ConfigError, match="canary"):
        RolloutConfig(canary=0.0)


def test_config_from_workspace_section(ws: Workspace) -> None:
    path = ws.root / "edgeloop.toml"
    path.write_text(path.read_text() + '\n[rollout]\ncanary = "20%"\nsoak_s = 2\nmax_p99_ms = 80\n')
    cfg = RolloutConfig.from_workspace(Workspace.open(ws.root))
    assert (cfg.canary, cfg.soak_s, cfg.max_p99_ms, cfg.step) == (0.2, 2, 80, 0.25)
    path.write_text(path.read_text() + "max_latency = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        RolloutConfig.from_workspace(Workspace.open(ws.root))


# -- start: selection, persistence, refusals ------------------------------------------------------


def test_start_records_without_publishing(ws: Workspace, db: ControlDB) -> None:
    docs = seed(ws, db, ["c", "a", "b"], offline=("a",))
    manager = RolloutManager(ws, db, None, config=FAST)
    info = manager.start("sensor@v2", canary="34%", step="34%", reason="v2 won its A/B test")
    # Every device with desired state; online ones first so the canary can answer.
    assert [[d["device"] for d in b["devices"]] for b in info["batches"]] == [["b", "c"], ["a"]]
    assert info["state"] == "running"
    assert {d["state"] for b in info["batches"] for d in b["devices"]} == {"waiting"}
    assert all(db.desired(d)[0] == 1 for d in docs)  # nothing published yet
    rows = manager.store.devices(info["id"])
    assert {r.device: r.previous_doc for r in rows} == docs  # saved for rollback
    assert steps(db, info["id"]) == ["started"]
    again = RolloutManager(ws, db, None, config=FAST).status(info["id"])[0]
    assert again["batches"] == info["batches"]

    with pytest.raises(RolloutError, match=f"already in running rollout {info['id']}"):
        manager.start("sensor@v2", devices=["b"])
    with pytest.raises(RolloutError, match=r"unknown device newbie; known devices: a, b, c"):
        manager.start("sensor@v2", devices=["newbie"])
    register(db, ["newbie"])
    with pytest.raises(RolloutError, match="no desired state yet for newbie"):
        manager.start("sensor@v2", devices=["newbie"])
    with pytest.raises(RolloutError, match="not both"):
        manager.start("sensor@v2", devices=["b"], group="g")
    with pytest.raises(RolloutError, match="device list is empty"):
        manager.start("sensor@v2", devices=[])
    with pytest.raises(RolloutError, match="has no devices"):
        manager.start("sensor@v2", group="nobody")
    with pytest.raises(RolloutError, match="v9"):
        manager.start("sensor@v9", devices=["b"])
    with pytest.raises(RolloutError, match="without a broker connection"):
        manager.tick()


def test_start_by_group_and_explicit_order(ws: Workspace, db: ControlDB) -> None:
    seed(ws, db, ["a", "b", "c", "d"])
    for device in ("a", "c", "d"):
        db.upsert_device(device, groups=["line-1"])
    manager = RolloutManager(ws, db, None, config=FAST)
    info = manager.start("sensor@v2", group="line-1", canary=0.34, step=0.34)
    assert [[d["device"] for d in b["devices"]] for b in info["batches"]] == [["a", "c"], ["d"]]
    assert info["selector"] == {"group": "line-1"}
    other = manager.start("sensor@v2", devices=["b"], canary=1.0)
    assert [[d["device"] for d in b["devices"]] for b in other["batches"]] == [["b"]]


# -- driving: happy path and resume ------------------------------------------------------------


def test_batches_gate_and_resume_without_republishing(ws, db, client, probe, broker) -> None:
    seed(ws, db, ["a", "b", "c"])
    probe.subscribe("edgeloop/+/desired")
    probe.subscribe("edgeloop/models/#")
    drain(probe)  # retained leftovers: none, but be sure
    # Traffic sensor@v2 saw as an A/B challenger on revision 1 must not count.
    handle_report(db, report("a", 1, "sensor@v2", ts=time.time(), requests=10, errors=9))

    first = RolloutManager(ws, db, client, config=FAST)
    rid = first.start("sensor@v2", canary=0.34, step=0.34)["id"]
    first.tick()
    sent = drain(probe)
    assert sent[0] == ("edgeloop/models/sensor/v2", sensor_model("v2", algo="rf").size)
    desired = {t: p for t, p in sent[1:]}
    assert set(desired) == {"edgeloop/a/desired", "edgeloop/b/desired"}
    for doc in desired.values():
        assert doc["revision"] == 2
        assert [(m["variant"], m["weight"]) for m in doc["models"]] == [("sensor@v2", 100.0)]

    # The control node restarts: a new manager on a new connection to the same file.
    db2 = ControlDB(ws.control_db)
    try:
        second = RolloutManager(ws, db2, client, config=FAST)
        second.tick()
        assert drain(probe) == []  # nothing published twice
        handle_status(db2, "a", status("a", 2, "v2"))
        second.tick()
        s = second.status(rid)[0]
        assert s["current_batch"] == 1
        assert [d["state"] for d in s["batches"][0]["devices"]] == ["loaded", "pending"]
        assert s["state"] == "running"  # a has no telemetry after loading yet: soaking
        load(db2, "a", 2)
        load(db2, "b", 2)
        second.tick()
        sent = drain(probe)
        assert [t for t, _ in sent] == ["edgeloop/c/desired"]
        assert second.status(rid)[0]["current_batch"] == 2
        load(db2, "c", 2)
        second.tick()
        final = second.status(rid)[0]
    finally:
        db2.close()
    assert final["state"] == "completed"
    assert final["devices_loaded"] == 3
    assert [b["state"] for b in final["batches"]] == ["passed", "passed"]
    assert final["batches"][0]["devices"][0]["health"]["errors"] == 0  # the A/B report ignored
    assert steps(db, rid) == [
        "started",
        "artifact_published",
        "batch_published",
        "device_loaded",
        "device_loaded",
        "batch_passed",
        "batch_published",
        "device_loaded",
        "batch_passed",
        "completed",
    ]
    assert all(db.desired(d)[0] == 2 for d in "abc")


def test_two_drivers_take_each_step_once(ws, db, broker) -> None:
    """The daemon and a `rollout wait` CLI may drive the same rollout at once."""
    import threading

    seed(ws, db, ["a", "b", "c"])
    rid = RolloutManager(ws, db, None, config=FAST).start("sensor@v2", canary=0.34, step=0.34)["id"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def drive() -> None:
        own = ControlDB(ws.control_db)  # each driver has its own connection, as in production
        try:
            with connected_client(broker.url) as c:
                manager = RolloutManager(ws, own, c, config=FAST)
                while not stop.wait(0.005):
                    manager.tick()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        manager = RolloutManager(ws, db, None, config=FAST)
        deadline = time.monotonic() + 20
        while manager.status(rid)[0]["state"] == "running" and time.monotonic() < deadline:
            for device, row in (
                (d["device"], d) for b in manager.status(rid)[0]["batches"] for d in b["devices"]
            ):
                if row["state"] == "pending":
                    load(db, device, 2)
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert manager.status(rid)[0]["state"] == "completed"
    assert steps(db, rid) == [
        "started",
        "artifact_published",
        "batch_published",
        "device_loaded",
        "device_loaded",
        "batch_passed",
        "batch_published",
        "device_loaded",
        "batch_passed",
        "completed",
    ]
    assert all(db.desired(d)[0] == 2 for d in "abc")


# -- failures and rollback -----------------------------------------------------------------------


def test_rollback_doc_restores_previous_models_under_a_higher_revision() -> None:
    previous = {
        "revision": 4,
        "experiment": "exp-1",
        "models": [{"name": "m", "version": "v1"}],
        "allocation": {"experiment_id": "exp-1", "buckets": 10000, "ranges": {}},
        "settings": {"x": 1},
    }
    doc = rollback_doc(previous, current_revision=5, target_revision=5)
    assert doc == {**previous, "revision": 6}
    # A target published but not yet recorded in the desired table still counts.
    assert rollback_doc(previous, current_revision=4, target_revision=5)["revision"] == 6
    assert rollback_doc(previous, None, None)["revision"] == 5


def test_load_error_in_a_later_batch_rolls_back_every_switched_device(
    ws, db, client, probe
) -> None:
    docs = seed(ws, db, ["a", "b", "c"])
    probe.subscribe("edgeloop/+/desired")
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=0.34, step=0.34)["id"]
    manager.tick()
    load(db, "a", 2)
    load(db, "b", 2)
    manager.tick()  # batch 1 passes, batch 2 goes to c
    drain(probe)
    error = {
        "code": "artifact_too_large",
        "message": "sensor@v2 is 244617 bytes",
        "revision": 2,
        "ts": time.time(),
    }
    handle_status(db, "c", status("c", 1, "v1", error=error))
    manager.tick()
    s = manager.status(rid)[0]
    assert s["state"] == "rolled_back"
    assert "c could not load sensor@v2: artifact_too_large" in s["failure"]
    assert [b["state"] for b in s["batches"]] == ["passed", "failed"]
    assert {d["device"]: d["state"] for b in s["batches"] for d in b["devices"]} == dict.fromkeys(
        "abc", "rolled_back"
    )
    sent = dict(drain(probe))
    for device in "abc":
        doc = sent[f"edgeloop/{device}/desired"]
        # previous models, allocation, settings (signed for the device)
        assert unsealed(doc) == unsealed({**docs[device], "revision": 3})
        assert doc["device"] == device
        assert db.desired(device) == (3, doc)
    assert steps(db, rid)[-3:] == ["batch_failed", "rolling_back", "rolled_back"]
    [event] = db.events(kind="rollout_rolled_back")
    assert event["message"].startswith(f"{rid}: rolled back 3 device(s): a -> r3, b -> r3, c -> r3")
    manager.tick()
    assert drain(probe) == []  # a finished rollback publishes nothing more

    # The HTML report's rollout section, checked by the report's own validator.
    view = report_view(s)
    assert view["previous"] == "sensor@v1"
    assert [(b["index"], b["label"], b["devices"], b["result"]) for b in view["batches"]] == [
        (0, "canary", ["a", "b"], "passed"),
        (1, "step 1", ["c"], "failed"),
    ]
    report = parse_report(
        {
            "title": "t",
            "generated_at": time.time(),
            "workspace": None,
            "timeline": [],
            "events": [],
            "drift": None,
            "experiment": None,
            "rollout": view,
            "devices": [],
            "summary": None,
        }
    )
    (rollout,) = report.rollouts
    assert rollout.state == "rolled_back"
    assert "artifact_too_large" in rollout.batches[1].reason


@pytest.mark.parametrize(
    ("report_kw", "why"),
    [
        ({"requests": 100, "errors": 10}, "error rate 10.0% (10/100) over the 5.0% gate"),
        ({"requests": 50, "latency_s": 0.2}, "p99 latency"),
    ],
)
def test_unhealthy_canary_rolls_back(ws, db, client, report_kw, why) -> None:
    seed(ws, db, ["a", "b"])
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=0.5, step=0.5)["id"]
    manager.tick()
    load(db, "a", 2, **report_kw)
    manager.tick()
    s = manager.status(rid)[0]
    assert s["state"] == "rolled_back"
    assert why in s["failure"]
    assert db.desired("a")[0] == 3
    assert db.desired("b")[0] == 1  # never switched, never touched


def test_crash_loop_fails_the_batch(ws, db, client) -> None:
    seed(ws, db, ["a"])
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2")["id"]
    manager.tick()
    for restart in range(1, 4):  # started_at changes: a new process each time
        handle_status(db, "a", status("a", 1, "v1", started_at=1000.0 + restart))
        manager.tick()
    s = manager.status(rid)[0]
    assert s["state"] == "rolled_back"
    assert "restarted 3 times (crash loop; the gate allows 2)" in s["failure"]
    assert steps(db, rid).count("device_restarted") == 3


def test_timeout_uses_the_persisted_publish_time(ws, db, client) -> None:
    seed(ws, db, ["a"])
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", batch_timeout_s=10)["id"]
    t0 = time.time()
    manager.tick(t0)
    RolloutManager(ws, db, client, config=FAST).tick(t0 + 9)  # a restart does not reset the timer
    assert manager.status(rid)[0]["state"] == "running"
    RolloutManager(ws, db, client, config=FAST).tick(t0 + 11)
    s = manager.status(rid)[0]
    assert s["state"] == "rolled_back"
    assert "timed out after 10 s: a has not loaded it (reports r1)" in s["failure"]


def test_offline_devices_are_not_waited_for_but_lost_ones_are(ws, db, client) -> None:
    seed(ws, db, ["a", "b", "c"], offline=("c",))
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=1.0)["id"]
    manager.tick()
    assert manager.status(rid)[0]["batches"][0]["devices"][2]["state"] == "offline"
    load(db, "a", 2)
    # b was online when its desired state went out, then vanished: maybe crashing.
    handle_status(db, "b", {"device": "b", "online": False, "reason": "lost"})
    manager.tick()
    assert manager.status(rid)[0]["state"] == "running"
    load(db, "b", 2)
    manager.tick()
    s = manager.status(rid)[0]
    assert s["state"] == "completed"
    assert {d["device"]: d["state"] for d in s["batches"][0]["devices"]} == {
        "a": "loaded",
        "b": "loaded",
        "c": "offline",
    }
    [completed] = db.events(kind="rollout_completed")
    assert completed["data"]["offline"] == ["c"] and "get it on return: c" in completed["message"]
    handle_status(db, "c", status("c", 2, "v2"))  # back, with the retained desired state
    assert manager.status(rid)[0]["batches"][0]["devices"][2]["state"] == "loaded"


def test_abort_rolls_back_switched_devices_only(ws, db, client) -> None:
    seed(ws, db, ["a", "b", "c"])
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=0.34, step=0.34)["id"]
    manager.tick()
    s = manager.abort(rid, "operator changed their mind")
    assert s["state"] == "rolled_back"
    assert s["failure"] == "aborted: operator changed their mind"
    assert [db.desired(d)[0] for d in "abc"] == [3, 3, 1]
    assert [b["state"] for b in s["batches"]] == ["stopped", "skipped"]
    assert [d["state"] for d in s["batches"][1]["devices"]] == ["untouched"]
    with pytest.raises(RolloutError, match="already rolled_back"):
        manager.abort(rid)
    with pytest.raises(RolloutError, match="no rollout"):
        manager.abort("ro-nope")
    # The devices are free again.
    assert manager.start("sensor@v2", devices=["a"])["state"] == "running"


def test_abort_racing_a_batch_publish_leaves_the_rollback_last(ws, db, broker) -> None:
    """An abort from the CLI lands while the daemon is publishing a batch: the device
    the daemon was sending the target to must still end on its rollback document."""
    seed(ws, db, ["a", "b"])
    rid = RolloutManager(ws, db, None, config=FAST).start("sensor@v2", canary=1.0)["id"]
    other = ControlDB(ws.control_db)

    class AbortAfterFirstTarget:
        """The daemon's publisher, with an operator's abort right after one PUBACK."""

        def __init__(self, client: ControlClient) -> None:
            self.client = client
            self.fired = False

        def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
            self.client.publish(topic, payload, **kw)
            if topic == "edgeloop/a/desired" and not self.fired:
                self.fired = True
                with connected_client(broker.url) as cli_client:
                    RolloutManager(ws, other, cli_client, config=FAST).abort(rid, "operator")

    try:
        with connected_client(broker.url) as c:
            daemon = RolloutManager(ws, db, AbortAfterFirstTarget(c), config=FAST)
            daemon.tick()
            daemon.tick()
            retained = {
                m.topic.split("/")[1]: open_desired(m.payload)
                for m in c.retained("edgeloop/+/desired", settle=0.3)
            }
    finally:
        other.close()
    s = daemon.status(rid)[0]
    assert s["state"] == "rolled_back"
    assert retained["a"]["revision"] == 3  # the rollback, not the target (r2)
    assert retained["a"]["models"][0]["version"] == "v1"
    assert db.desired("a")[0] == 3
    # b was never planned: the abort came first, so it was never touched.
    assert "b" not in retained and db.desired("b")[0] == 1


def test_rollback_is_resumable(ws, db, broker) -> None:
    """Rollback documents are planned once, before any is sent: after a broker outage
    (or a control-node restart) mid-rollback the very same documents go out."""
    seed(ws, db, ["a", "b"])
    with connected_client(broker.url) as c:
        manager = RolloutManager(ws, db, c, config=FAST)
        rid = manager.start("sensor@v2", canary=1.0)["id"]
        manager.tick()
        broker.stop()
        time.sleep(1.0)  # let the client notice
        s = manager.abort(rid, "bad metrics")
    assert s["state"] == "rolling_back"
    assert "rolling back a" in s["last_error"]
    planned = {d.device: d.rollback_doc["revision"] for d in manager.store.devices(rid)}
    assert planned == {"a": 3, "b": 3}
    broker.start()
    db2 = ControlDB(ws.control_db)
    try:
        with connected_client(broker.url) as c:
            resumed = RolloutManager(ws, db2, c, config=FAST)
            resumed.tick()
            resumed.tick()
        s = resumed.status(rid)[0]
    finally:
        db2.close()
    assert s["state"] == "rolled_back"
    assert [db.desired(d)[0] for d in "ab"] == [3, 3]
    assert steps(db, rid).count("rolled_back") == 1


@contextmanager
def connected_client(url: str) -> Iterator[ControlClient]:
    c = ControlClient(url).connect()
    try:
        yield c
    finally:
        c.close()


# -- groups CLI ----------------------------------------------------------------------------------


def test_group_cli(ws: Workspace, db: ControlDB) -> None:
    """The real `edgeloop` app, in-process (a subprocess per call costs seconds of imports)."""
    from typer.testing import CliRunner

    from edgeloop_control.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(
            app, list(args), env={"EDGELOOP_WORKSPACE": str(ws.root), "COLUMNS": "160"}
        )

    out = run("group", "set", "line-1", "a", "b", "--json")
    assert out.exit_code == 1 and "unknown devices a, b" in out.output  # not in the inventory
    assert db.devices() == []
    out = run("group", "set", "line-1", "a", "b", "--json", "--new-device")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"group": "line-1", "devices": ["a", "b"]}
    assert run("group", "set", "line-2", "b", "c", "--new-device").exit_code == 0
    assert run("group", "set", "line-1", "a", "c").exit_code == 0  # exactly these: b leaves
    out = run("group", "ls", "--json")
    assert json.loads(out.stdout) == {"line-1": ["a", "c"], "line-2": ["b", "c"]}
    assert db.device("c")["groups"] == ["line-1", "line-2"]
    assert "line-1" in run("group", "ls").stdout
    bad = run("group", "set", "bad name!", "a")
    assert bad.exit_code == 1 and "group name" in bad.stderr
    assert run("group", "rm", "line-2").exit_code == 0
    assert json.loads(run("group", "ls", "--json").stdout) == {"line-1": ["a", "c"]}
    assert run("group", "rm", "line-2").exit_code == 1
    # A group is a rollout selector.
    seed(ws, db, ["a", "b", "c"])
    out = run("rollout", "sensor@v2", "--group", "line-1", "--canary", "50%", "--json")
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert [[d["device"] for d in b["devices"]] for b in info["batches"]] == [["a"], ["c"]]
    out = run("rollout", "status")
    assert info["id"] in out.stdout and "running" in out.stdout
    assert [r["id"] for r in json.loads(run("rollout", "status", "--json").stdout)] == [info["id"]]
    typo = run("rollout", "stauts")
    assert typo.exit_code != 0 and "No such command" in typo.output


def test_abort_and_wait_cli(ws: Workspace, db: ControlDB, client, broker) -> None:
    from typer.testing import CliRunner

    from edgeloop_control.cli import app

    env = {"EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": broker.url, "COLUMNS": "160"}
    runner = CliRunner()
    seed(ws, db, ["a", "b"])
    manager = RolloutManager(ws, db, client, config=FAST)
    rid = manager.start("sensor@v2", canary=0.5)["id"]
    manager.tick()
    out = runner.invoke(
        app, ["rollout", "abort", rid, "--reason", "pager went off", "--json"], env=env
    )
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    assert info["state"] == "rolled_back" and info["failure"] == "aborted: pager went off"
    assert [db.desired(d)[0] for d in "ab"] == [3, 1]
    again = runner.invoke(app, ["rollout", "abort", rid], env=env)
    assert again.exit_code == 1 and f"rollout {rid} is already rolled_back" in again.stderr
    missing = runner.invoke(app, ["rollout", "wait", "ro-nope"], env=env)
    assert missing.exit_code == 1 and "no rollout 'ro-nope'" in missing.stderr
    bad = runner.invoke(app, ["rollout", "start", "sensor@v2", "--canary", "150%"], env=env)
    assert bad.exit_code == 1 and "canary must be within" in bad.stderr
    bad = runner.invoke(app, ["rollout", "sensor@v2", "--gate", "latency=3"], env=env)
    assert bad.exit_code == 1 and "unknown gate 'latency'" in bad.stderr
