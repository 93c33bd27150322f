"""``edgeloop demo``: the whole loop, unattended, on one box.

Train v1 -> deploy to three agents -> stream traffic with delayed labels ->
replace a vibration sensor (the data shifts) -> drift detected -> v2 retrained
-> A/B v1 vs v2 with the sequential test -> v2 promoted and rolled out in stages.
Every step is narrated with its timing; an HTML report is written at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from edgeloop_control.demo.fleetsim import AgentHandle, DemoClient, percentile, start_agent
from edgeloop_control.demo.narrate import Narrator
from edgeloop_control.demo.reportdata import collect_report_data
from edgeloop_control.demo.sensors import TARGET, generate
from edgeloop_control.demo.traffic import Traffic
from edgeloop_control.errors import EdgeloopError
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.fleet.desired import DesiredState
from edgeloop_control.fleet.inventory import register
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import connected
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.jobs.train_and_register import train_and_register
from edgeloop_control.registry import Registry
from edgeloop_control.terminal import table
from edgeloop_control.training import TrainConfig

# Policy settings tuned so the loop completes in minutes rather than days; a
# real site keeps the defaults (docs/retraining.md). The latency gates are
# looser than the defaults because this one 2-core box hosts the broker, the
# control node, three agents and the traffic generator at once: p99 here is
# scheduling delay, not the agent (docs/performance.md has the agent's figures).
DEMO_POLICY = """
[retrain]
consecutive_windows = 2
min_samples = 500
cooldown_s = 3600
scope = "fleet"
reference_share = 0.2

[experiment]
min_samples_per_arm = 150
challenger_weight = 50
max_p99_ms = 300

[rollout]
canary = 0.34
step = 0.33
soak_s = 3
batch_timeout_s = 90
max_p99_ms = 300
"""


class DemoError(EdgeloopError, RuntimeError):
    pass


def run_demo(
    *,
    broker_url: str | None = None,
    workdir: Path | None = None,
    devices: int = 3,
    rate: float = 40.0,
    timeout_s: float = 420.0,
    keep: bool = False,
    console: Console | None = None,
    report_path: Path | None = None,
) -> dict[str, Any]:
    console = console or Console()
    say = Narrator(console)
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeloop-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    report_path = report_path or (tmp / "report.html")
    summary: dict[str, Any] = {"workdir": str(tmp)}
    names = [f"pump-station-{i + 1}" for i in range(devices)]
    with ExitStack() as stack:
        with say.step(
            "Start a private Mosquitto broker" if not broker_url else "Use the given broker"
        ):
            if broker_url is None:
                broker = PrivateBroker(tmp / "broker").start()
                stack.callback(broker.stop)
                broker_url = broker.url
            say.say(f"broker {broker_url} (QoS 1 window raised, TCP_NODELAY, persistence on)")

        with say.step("Create a workspace and ingest a month of pump readings"):
            ws = Workspace.init(tmp / "workspace", broker=broker_url)
            with open(ws.root / "edgeloop.toml", "a", encoding="utf-8") as fh:
                fh.write(DEMO_POLICY)
            ws = Workspace.open(ws.root)
            data = generate(8000, seed=1)
            csv = tmp / "pumps-january.csv"
            data.to_csv(csv, index=False)
            result = FeatureStore(ws.feature_store_dir).ingest(
                csv, "pumps", entity=["pump_id"], timestamp="ts"
            )
            say.say(
                f"{len(data)} readings from {data['pump_id'].nunique()} pumps, "
                f"{data[TARGET].mean():.0%} followed by a fault -> feature view "
                f"{result.view}@v{result.version}"
            )

        with say.step("Train sensor@v1, check ONNX parity, sign and register it"):
            outcome = train_and_register(
                ws, name="sensor", config=TrainConfig(target=TARGET, algo="hgb"), view="pumps"
            )
            m = outcome.result.metrics
            say.say(
                f"{outcome.version.ref}: accuracy {m['accuracy']:.3f}, ROC AUC {m['roc_auc']:.3f}; "
                f"parity max |Δp| {outcome.result.parity['max_prob_diff']:.1e}; "
                f"tagged {outcome.version.tag}, stage {outcome.stage}"
            )
            summary["v1"] = outcome.to_dict()

        with say.step(f"Start the control daemon and {devices} agents; deploy sensor@v1"):
            daemon_log = tmp / "control.log"
            daemon = start_daemon(ws, broker_url, daemon_log)
            stack.callback(stop_process, daemon)
            handles: list[AgentHandle] = []
            for name in names:
                handle = start_agent(
                    name,
                    broker_url,
                    tmp,
                    ws.public_key_path,
                    extra=[
                        "--capture-rate",
                        "0.5",
                        "--telemetry-interval",
                        "1",
                        "--drift-window",
                        "400",
                    ],
                )
                handles.append(handle)
                stack.callback(handle.stop)
            registry = Registry.for_workspace(ws, create=False, sync_remote=False)
            mv = registry.get("sensor@v1")
            db = ControlDB(ws.control_db)
            stack.callback(db.close)
            register(db, names, source="demo")  # known before their first status arrives
            with connected(broker_url) as client:
                desired = DesiredState.for_workspace(ws, db, client)
                desired.publish_artifact(mv, registry.artifact_bytes(mv))
                for name in names:
                    desired.publish(name, desired.plan(name, [(mv, 100.0)], []))
            wait_until(lambda: all_on(db, names, "sensor@v1"), 60, "agents did not load sensor@v1")
            say.say("each agent verified sha256 + Ed25519 signature and reports sensor@v1")

        app = DemoClient(broker_url, ws.topic_prefix)
        stack.callback(app.close)
        traffic = Traffic(app, names, rate_per_device=rate).start()
        stack.callback(traffic.stop)
        events = EventTail(db, say)

        with say.step("Stream normal traffic with delayed labels"):
            _watch(events, 35)
            say.say(f"{traffic.sent} requests, {traffic.labelled} labels so far; no drift flagged")

        with say.step("Replace the vibration sensors (x1.41 gain, +0.6 offset) and keep streaming"):
            traffic.shift()
            shift_at = traffic.shifted_at
            say.say("readings now come from the new sensors; the model was never told")

        milestones = [
            ("drift_detected", "Drift detected by the agents' monitors"),
            ("registered", "sensor@v2 retrained on recent labelled data and registered"),
            ("ab_started", "A/B experiment sensor@v1 vs sensor@v2 started"),
            ("ab_decision", "Sequential test decided"),
            ("rollout_completed", "Staged rollout of the winner completed"),
        ]
        deadline = time.monotonic() + timeout_s
        for kind, title in milestones:
            with say.step(title):
                event = events.wait_for(kind, deadline)
                if event is None:
                    raise DemoError(
                        f"no {kind!r} event within the time limit; see {daemon_log} and "
                        f"the agent logs in {tmp / 'agents'}"
                    )
                if kind == "registered" and "stage challenger" not in event["message"]:
                    raise DemoError(
                        f"the retrained model did not become challenger: {event['message']}"
                    )
                if kind == "ab_decision" and "promot" not in event["message"].lower():
                    raise DemoError(
                        f"the experiment did not promote the challenger: {event['message']}"
                    )

        with say.step("Keep streaming: the fleet runs sensor@v2 on the new sensors"):
            wait_until(
                lambda: all_on(db, names, "sensor@v2"), 60, "not every device reports sensor@v2"
            )
            _watch(events, 20)
            traffic.stop()
            app.wait_replies(20)
            stages = Registry.for_workspace(ws, create=False, sync_remote=False).stages("sensor")
            say.say(f"registry stages now: {stages}")

        with say.step("Write the HTML report"):
            data = collect_report_data(
                ws, db, say=say, shift_at=shift_at, client=app, devices=names
            )
            from edgeloop_control.report import write_report

            path = write_report(data, report_path)
            say.say(f"report: {path}")
            summary["report"] = str(path)

        _print_devices(console, app, names)
        with say.step("Shut down cleanly"):
            traffic.stop()
            for handle in handles:
                rc = handle.stop()
                if rc != 0:
                    raise DemoError(
                        f"agent {handle.device} exited with {rc}; see {handle.log_path}"
                    )
            stop_process(daemon)
    console.print(f"[bold green]demo finished in {say.elapsed:.0f} s[/]; report: {report_path}")
    if not keep and workdir is None and report_path.parent != tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


# -- helpers -----------------------------------------------------------------------


def start_daemon(ws: Workspace, broker_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "edgeloop"
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            str(exe) if exe.exists() else "edgeloop",
            "-w",
            str(ws.root),
            "--broker",
            broker_url,
            "serve",
            "--tick",
            "0.5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise DemoError(message)


def all_on(db: ControlDB, devices: list[str], ref: str) -> bool:
    for device in devices:
        row = db.device(device)
        status = (row or {}).get("status") or {}
        served = {m.get("variant") for m in status.get("models", []) if m.get("role") == "serve"}
        if not row or not row.get("online") or served != {ref}:
            return False
    return True


class EventTail:
    """Prints control-node events as they happen; waits for a kind."""

    def __init__(self, db: ControlDB, say: Narrator) -> None:
        self.db = db
        self.say = say
        self.seen = {e["id"] for e in db.events(limit=10_000)}
        self.history: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        fresh = [e for e in self.db.events(limit=500) if e["id"] not in self.seen]
        for e in fresh:
            self.seen.add(e["id"])
            self.history.append(e)
            if e["kind"] not in ("device",):
                self.say.say(
                    f"[dim]{time.strftime('%H:%M:%S', time.localtime(e['ts']))}[/] "
                    f"[magenta]{e['kind']}[/] {e['message']}"
                )
        return fresh

    def wait_for(self, kind: str, deadline: float) -> dict[str, Any] | None:
        for e in self.history:
            if e["kind"] == kind:
                return e
        while time.monotonic() < deadline:
            for e in self.poll():
                if e["kind"] == kind:
                    return e
            time.sleep(0.5)
        return None


def _watch(events: EventTail, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        events.poll()
        time.sleep(0.5)


def _print_devices(console: Console, app: DemoClient, names: list[str]) -> None:
    rows = []
    for name in names:
        st = app.stats.get(name)
        if st is None:
            continue
        rows.append(
            [
                name,
                ", ".join(f"{v}: {n}" for v, n in sorted(st.versions.items())),
                st.sent,
                st.errors,
                f"{percentile(st.rtt_ms, 50) or 0:.2f}",
                f"{percentile(st.rtt_ms, 99) or 0:.2f}",
            ]
        )
    console.print(
        table(
            "Per device (as the app saw it)",
            ["device", "answers by version", "requests", "errors", "p50 ms", "p99 ms"],
            rows,
            wrap=("answers by version",),
        )
    )
