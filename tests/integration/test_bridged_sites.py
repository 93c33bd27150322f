"""Two site brokers bridged to a central one: a link cut mid-stream loses nothing.

Real Mosquittos (two sites, one centre) with the bridge sections that
`edgeloop broker config` generates, a real agent per site, the real control
daemon on the central broker. Apps at each site keep getting answers while the
centre is gone; telemetry and captured samples queue at the sites and reach
the control node once the link is back, each exactly once after de-duplication;
desired state and artifacts travel from the centre to the sites before and
after the cut.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time
from pathlib import Path

import pytest

from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.sitebridge import BridgeConfigError, BridgeSettings, bridge_config
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.registry import Registry
from tests.integration.models import sample_features, sensor_model
from tests.integration.test_control_daemon import EDGELOOP, start_daemon, wait_connected
from tests.mqtt_helpers import AgentProcess, Probe

SITES = {"site-a": "pump-a1", "site-b": "pump-b1"}


class SiteBroker(PrivateBroker):
    """A private Mosquitto with a bridge section appended to its configuration."""

    def __init__(self, workdir: Path, bridge: str) -> None:
        super().__init__(workdir)
        self.bridge = bridge

    def write_config(self) -> Path:
        path = super().write_config()
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(self.bridge)
        return path


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace.init(tmp_path / "ws")
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write("\n[retrain]\nenabled = false\n")
    registry = Registry.for_workspace(ws)
    registry.register("sensor", sensor_model("v1").data, {"algorithm": "logreg"})
    registry.register("sensor", sensor_model("v2", seed=1).data, {"algorithm": "logreg"})
    return Workspace.open(ws.root)


def deploy(ws: Workspace, central: PrivateBroker, ref: str) -> None:
    env = {**os.environ, "EDGELOOP_WORKSPACE": str(ws.root), "EDGELOOP_BROKER": central.url}
    args = [EDGELOOP, "deploy", ref, "--new-device"]
    for device in SITES.values():
        args += ["--device", device]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


class Watch:
    """The centre's view: the newest status per device and each site's link state."""

    def __init__(self, url: str) -> None:
        self.probe = Probe(url)
        self.probe.subscribe("edgeloop/+/status")
        self.probe.subscribe("edgeloop/broker/+/bridge")
        self.status: dict[str, dict] = {}
        self.links: dict[str, bytes] = {}

    def drain(self, timeout: float) -> None:
        try:
            msg = self.probe.next(timeout=timeout)
        except (TimeoutError, queue.Empty):
            return
        parts = msg.topic.split("/")
        if parts[1] == "broker":
            self.links[parts[2]] = msg.payload
        elif msg.payload:
            self.status[parts[1]] = json.loads(msg.payload)

    def serving(self, version: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_serves(self.status.get(d), version) for d in SITES.values()):
                return
            self.drain(0.2)
        raise TimeoutError(f"not every device serves {version}: {self.status}")


def _serves(status: dict | None, version: str) -> bool:
    return any(
        m.get("version") == version and m.get("role") == "serve"
        for m in (status or {}).get("models") or []
    )


def ask(app: Probe, device: str, n: int, start: int) -> list[str]:
    """n requests and their labels from a site app; every one must be answered."""
    features = sample_features(1)[0]
    ids = [f"{device}-q{start + i}" for i in range(n)]
    for i, rid in enumerate(ids):
        app.publish(
            f"edgeloop/{device}/predict",
            {"id": rid, "features": features},
            response_topic=f"edgeloop/{device}/replies/app",
        )
        app.publish(f"edgeloop/{device}/feedback", {"id": rid, "label": (start + i) % 2})
    replies = app.collect(n, timeout=30)
    assert sorted(r["id"] for r in replies) == sorted(ids)
    assert all("error" not in r for r in replies), replies[:3]
    return ids


def test_site_bridges_survive_a_cut_link(workspace: Workspace, tmp_path: Path, agents) -> None:
    ws = workspace
    central = PrivateBroker(tmp_path / "central").start()
    sites: dict[str, SiteBroker] = {}
    apps: dict[str, Probe] = {}
    daemon = None
    try:
        for site in SITES:
            settings = BridgeSettings(site=site, central=central.url, retry_base_s=1, retry_max_s=2)
            sites[site] = SiteBroker(tmp_path / site, bridge_config(settings)).start()
        log = tmp_path / "control.log"
        daemon, before = start_daemon(ws, central.url, log)
        wait_connected(log, before)
        watch = Watch(central.url)
        for site, device in SITES.items():
            agent = AgentProcess(
                broker_url=sites[site].url,
                device_id=device,
                state_dir=tmp_path / f"state-{device}",
                extra=[
                    "--trusted-key",
                    str(ws.public_key_path),
                    "--telemetry-interval",
                    "0.5",
                    "--capture-rate",
                    "1.0",
                ],
            ).start()
            agents.append(agent)
            apps[site] = Probe(sites[site].url)
            apps[site].subscribe(f"edgeloop/{device}/replies/#")

        # The control node reaches the sites' devices through the bridges.
        deploy(ws, central, "sensor@v1")
        watch.serving("v1")

        sent = {device: ask(apps[site], device, 60, 0) for site, device in SITES.items()}

        # The centre goes away mid-stream: every site keeps answering its apps.
        central.stop()
        t0 = time.monotonic()
        for site, device in SITES.items():
            sent[device] += ask(apps[site], device, 60, 60)
        assert time.monotonic() - t0 < 30

        central.start()  # same port, its persistence kept retained state and sessions
        watch.probe.wait_connected()
        # A new deployment after the link is back reaches both sites.
        deploy(ws, central, "sensor@v2")
        watch.serving("v2")
        for site, device in SITES.items():
            sent[device] += ask(apps[site], device, 60, 120)

        for agent in agents:
            assert agent.stop() == 0  # last reports and the outbox flushed to the site
        db = ControlDB(ws.control_db)
        store = FeatureStore(ws.feature_store_dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = {
                device: db.conn.execute(
                    "SELECT COALESCE(SUM(requests), 0) FROM variant_stats WHERE device = ?",
                    (device,),
                ).fetchone()[0]
                for device in SITES.values()
            }
            if all(counts[d] >= len(ids) for d, ids in sent.items()):
                break
            time.sleep(0.5)
        time.sleep(3)  # a duplicate still in flight would now be counted twice
        for device, ids in sent.items():
            requests = db.conn.execute(
                "SELECT SUM(requests) FROM variant_stats WHERE device = ?", (device,)
            ).fetchone()[0]
            assert requests == len(ids), f"{device}: {requests} requests counted, {len(ids)} sent"
        frame = store.captured_training_frame("sensor")
        for device, ids in sent.items():
            got = frame[frame["device"] == device]["request_id"]
            assert sorted(got) == sorted(ids), f"{device}: captured samples lost or doubled"
        # Each site's link state reached the centre (retained, via notifications).
        watch.drain(0.5)
        assert set(watch.links) == set(SITES), watch.links
        watch.probe.close()
    finally:
        for app in apps.values():
            app.close()
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)
        for broker in sites.values():
            broker.stop()
        central.stop()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(site="$SYS", central="mqtt://h"), "site name"),
        (dict(site="a/b", central="mqtt://h"), "site name"),
        (dict(site="s", central="ftp://h"), "mqtt://"),
        (dict(site="s", central="mqtt://h", password="pw\nconnection evil"), "one line"),
        (dict(site="s", central="mqtt://h", ca_file=Path("/ca.pem")), "plain text"),
        (dict(site="s", central="mqtt://a b:1883"), "plain name"),
        (dict(site="s", central="mqtt://h", username="u v"), "one line"),
    ],
)
def test_bridge_settings_refuse_what_mosquitto_would_misread(settings, message) -> None:
    with pytest.raises(BridgeConfigError, match=message):
        bridge_config(BridgeSettings(**settings))


def test_cli_prints_a_config_mosquitto_accepts(tmp_path: Path) -> None:
    out = subprocess.run(
        [EDGELOOP, "broker", "config", "--site", "plant-1", "--central", "mqtt://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "topic edgeloop/+/telemetry out 1" in out.stdout
    assert "predict" not in out.stdout  # request/reply stays on the site
    # Mosquitto itself parses it (and starts, retrying the unreachable centre).
    broker = SiteBroker(tmp_path / "b", out.stdout).start()
    try:
        assert broker.proc is not None and broker.proc.poll() is None
    finally:
        broker.stop()
    bad = subprocess.run(
        [EDGELOOP, "broker", "config", "--site", "models/x", "--central", "mqtt://h"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # A bad setting is a usage error: exit 2, one line (cli/common.py OneLineErrors).
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
