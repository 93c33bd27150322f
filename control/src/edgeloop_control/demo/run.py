"""``edgeloop demo``: the product's main job, unattended, on one box.

Starts a private Mosquitto (unless a broker is given), creates a workspace,
generates pump-sensor data, trains and registers a model, deploys it to agent
processes, drives prediction traffic as an app would, and prints a summary.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeloop_control.broker import PrivateBroker
from edgeloop_control.cli.common import table
from edgeloop_control.controldb import ControlDB
from edgeloop_control.demo.fleetsim import AgentHandle, DemoClient, percentile, start_agent
from edgeloop_control.demo.narrate import Narrator
from edgeloop_control.demo.sensors import FEATURES, TARGET, generate
from edgeloop_control.deploy import plan_desired, publish_artifact, publish_desired
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.mqttclient import connected
from edgeloop_control.registry import Registry
from edgeloop_control.training import TrainConfig
from edgeloop_control.trainrun import train_and_register
from edgeloop_control.workspace import Workspace


def run_demo(
    *,
    broker_url: str | None = None,
    workdir: Path | None = None,
    devices: int = 2,
    requests: int = 300,
    keep: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console()
    say = Narrator(console)
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeloop-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"workdir": str(tmp)}
    agents: list[AgentHandle] = []
    with ExitStack() as stack:
        with say.step("Start a private Mosquitto broker" if not broker_url else "Use the given broker"):
            if broker_url is None:
                broker = PrivateBroker(tmp / "broker").start()
                stack.callback(broker.stop)
                broker_url = broker.url
            say.say(f"broker {broker_url}")

        with say.step("Create a workspace and generate pump-sensor data"):
            ws = Workspace.init(tmp / "workspace", broker=broker_url)
            data = generate(8000, seed=1)
            csv = tmp / "pumps-january.csv"
            data.to_csv(csv, index=False)
            store = FeatureStore(ws.feature_store_dir)
            result = store.ingest(csv, "pumps", entity=["pump_id"], timestamp="ts")
            say.say(
                f"{len(data)} readings from {data['pump_id'].nunique()} pumps, "
                f"{data[TARGET].mean():.0%} followed by a fault; stored as {result.view}@v{result.version}"
            )

        with say.step("Train sensor@v1 (gradient boosting), check ONNX parity, register"):
            outcome = train_and_register(
                ws,
                name="sensor",
                config=TrainConfig(target=TARGET, algo="hgb", seed=0),
                view="pumps",
            )
            m = outcome.result.metrics
            say.say(
                f"{outcome.version.ref}: accuracy {m['accuracy']:.3f}, ROC AUC {m['roc_auc']:.3f}, "
                f"parity max |Δp| {outcome.result.parity['max_prob_diff']:.1e}, "
                f"signed and pushed to the DVC remote, stage {outcome.stage}"
            )
            summary["model"] = outcome.to_dict()

        names = [f"pump-station-{i + 1}" for i in range(devices)]
        with say.step(f"Start {devices} agents and deploy sensor@v1 to them"):
            for name in names:
                handle = start_agent(name, broker_url, tmp, ws.public_key_path)
                agents.append(handle)
                stack.callback(handle.stop)
            registry = Registry.for_workspace(ws, create=False, sync_remote=False)
            mv = registry.get("sensor@v1")
            db = ControlDB(ws.state_db)
            stack.callback(db.close)
            with connected(broker_url) as client:
                publish_artifact(client, ws.topic_prefix, mv, registry.artifact_bytes(mv))
                for name in names:
                    previous = db.desired(name)
                    doc = plan_desired(previous[1] if previous else None, [(mv, 100.0)], [])
                    publish_desired(client, db, ws.topic_prefix, name, doc)
            _wait_in_sync(broker_url, ws.topic_prefix, names, revision=1)
            say.say("every agent verified the signature and sha256, and reports sensor@v1 loaded")

        with say.step(f"Send {requests} prediction requests as an app would"):
            app = DemoClient(broker_url, ws.topic_prefix)
            stack.callback(app.close)
            traffic = generate(requests, seed=7)
            for i, (_, row) in enumerate(traffic.iterrows()):
                device = names[i % len(names)]
                features = {f: float(row[f]) for f in FEATURES}
                app.request(device, f"req-{i}", features, key=str(row["pump_id"]))
                time.sleep(0.002)
            missing = app.wait_replies(30)
            if missing:
                raise RuntimeError(f"{missing} requests got no reply")
            correct = sum(
                1
                for i, (_, row) in enumerate(traffic.iterrows())
                if app.replies[f"req-{i}"].get("prediction") == int(row[TARGET])
            )
            say.say(f"all {requests} answered; {correct / requests:.0%} agree with the later outcome")

        rows = []
        per_device = {}
        for name in names:
            st = app.stats.get(name)
            if st is None:
                continue
            per_device[name] = {
                "model": ", ".join(sorted(st.versions)),
                "requests": st.sent,
                "replies": st.replies,
                "errors": st.errors,
                "rtt_p50_ms": percentile(st.rtt_ms, 50),
                "rtt_p95_ms": percentile(st.rtt_ms, 95),
                "agent_p50_ms": percentile(st.agent_ms, 50),
            }
            d = per_device[name]
            rows.append(
                [
                    name,
                    d["model"],
                    d["requests"],
                    d["errors"],
                    f"{d['rtt_p50_ms']:.2f}",
                    f"{d['rtt_p95_ms']:.2f}",
                    f"{d['agent_p50_ms']:.3f}",
                ]
            )
        summary["devices"] = per_device
        console.print(
            table(
                "Per device",
                ["device", "model", "requests", "errors", "round trip p50 ms", "p95 ms", "in agent p50 ms"],
                rows,
            )
        )
        with say.step("Shut down cleanly"):
            for handle in agents:
                rc = handle.stop()
                if rc != 0:
                    raise RuntimeError(f"agent {handle.device} exited with {rc}; see {handle.log_path}")
            app.close()
    console.print(f"[bold green]demo finished in {say.elapsed:.1f} s[/]")
    if not keep and workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        console.print(f"workspace and logs kept in {tmp}")
    return summary


def _wait_in_sync(broker_url: str, prefix: str, devices: list[str], revision: int, timeout: float = 60) -> None:
    import json

    deadline = time.monotonic() + timeout
    pending = set(devices)
    with connected(broker_url) as client:
        while pending and time.monotonic() < deadline:
            for msg in client.retained(f"{prefix}/+/status", settle=0.2, timeout=2):
                try:
                    doc = json.loads(msg.payload)
                except ValueError:
                    continue
                dev = msg.topic.split("/")[-2]
                if dev in pending and doc.get("online") and doc.get("revision") == revision:
                    pending.discard(dev)
                elif dev in pending and doc.get("error"):
                    raise RuntimeError(f"{dev} could not apply revision {revision}: {doc['error']}")
            if pending:
                time.sleep(0.2)
    if pending:
        raise RuntimeError(f"devices {sorted(pending)} did not report revision {revision} in time")
