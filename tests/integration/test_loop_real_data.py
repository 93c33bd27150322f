"""The whole loop on a data set shaped like a loan book, not like the demo's pumps.

ingest (a view with no event timestamp; bool, int, float with missing values,
category) -> train -> deploy -> serve -> captured samples with delayed labels ->
the distribution shifts (a debt ratio in percent, a band's share tripled, more
accounts) -> drift -> retrain -> A/B -> promote -> staged rollout, with real agents,
a real broker, the real `edgeloop serve`, a real git+DVC registry. The pieces are
the demo's (demo/run.py, demo/traffic.py, demo/fleetsim.py); only the data is new.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from edgeloop_control.demo.fleetsim import DemoClient
from edgeloop_control.demo.narrate import Narrator
from edgeloop_control.demo.run import EventTail, all_on, start_daemon, stop_process, wait_until
from edgeloop_control.demo.traffic import Traffic
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.fleet.desired import DesiredState
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import connected
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.jobs.train_and_register import train_and_register
from edgeloop_control.registry import Registry
from edgeloop_control.training import TrainConfig
from tests.integration.loanbook import TARGET, loan_rows, loans, request_features
from tests.mqtt_helpers import AgentProcess

# Wall-clock bounds: make test runs this module after the parallel phase, alone.
pytestmark = pytest.mark.serial

DEVICES = ["loan-1", "loan-2"]
EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
# Small windows and samples so the loop closes in well under two minutes on two
# cores; the decisions are the product's, unchanged (docs/retraining.md).
POLICY = """
[retrain]
consecutive_windows = 2
min_samples = 300
cooldown_s = 3600
scope = "fleet"
reference_share = 0.2

[experiment]
min_samples_per_arm = 100
challenger_weight = 50
max_p99_ms = 500

[rollout]
canary = 0.5
step = 0.5
soak_s = 2
batch_timeout_s = 60
max_p99_ms = 500
"""
MILESTONES = ["drift_detected", "registered", "ab_started", "ab_decision", "rollout_completed"]


@dataclass
class Loop:
    """What the loop left behind, for the tests below to check."""

    ws: Workspace
    events: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    took_s: float = 0.0
    drifted_v1: set[str] = field(default_factory=set)
    before_shift: list[tuple[str, int, str]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    error_replies: dict[str, Any] = field(default_factory=dict)
    served: int = 0
    cli: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tmp = tmp_path_factory.mktemp("loanbook")
    t0 = time.monotonic()
    with ExitStack() as stack:
        broker = PrivateBroker(tmp / "broker").start()
        stack.callback(broker.stop)
        ws = Workspace.init(tmp / "ws", broker=broker.url)
        with open(ws.root / "edgeloop.toml", "a", encoding="utf-8") as fh:
            fh.write(POLICY)
        ws = Workspace.open(ws.root)
        result = Loop(ws)

        csv = tmp / "loans.csv"
        loans(3000, seed=1).to_csv(csv, index=False)
        # No --timestamp: the store stamps the ingest time; training must split at random.
        FeatureStore(ws.feature_store_dir).ingest(csv, "loans", entity=["applicant_id"])
        train_and_register(
            ws, name="loan", config=TrainConfig(target=TARGET, algo="logreg"), view="loans"
        )

        daemon = start_daemon(ws, broker.url, tmp / "control.log")
        stack.callback(stop_process, daemon)
        agents: list[AgentProcess] = []
        for name in DEVICES:
            agent = AgentProcess(
                broker_url=broker.url,
                device_id=name,
                state_dir=tmp / "agents" / name,
                extra=[
                    "--trusted-key",
                    str(ws.public_key_path),
                    "--capture-rate",
                    "1.0",
                    "--telemetry-interval",
                    "1",
                    "--drift-window",
                    # Above the monitor's 200-value minimum with room for the 8 % of
                    # missing debt ratios (200 rows would leave it unjudged).
                    "300",
                ],
            ).start()
            stack.callback(agent.stop)
            agents.append(agent)
        db = ControlDB(ws.control_db)
        stack.callback(db.close)
        registry = Registry.for_workspace(ws, create=False, sync_remote=False)
        mv = registry.get("loan@v1")
        with connected(broker.url) as client:
            desired = DesiredState.for_workspace(ws, db, client)
            desired.publish_artifact(mv, registry.artifact_bytes(mv))
            for name in DEVICES:
                desired.publish(name, desired.plan(name, [(mv, 100.0)], []))
        wait_until(lambda: all_on(db, DEVICES, "loan@v1"), 40, "agents did not load loan@v1")

        app = DemoClient(broker.url, ws.topic_prefix)
        stack.callback(app.close)
        row = loans(1, seed=77).iloc[0].to_dict()
        for rid, as_json in (("bool-as-number", False), ("bool-as-json", True)):
            app.request(DEVICES[0], rid, request_features(row, bool_as_json=as_json))
        app.wait_replies(10)
        result.replies = dict(app.replies)

        traffic = Traffic(
            app,
            DEVICES,
            rate_per_device=50,
            rows=loan_rows,
            encode=request_features,
            target=TARGET,
            label_delay_s=(0.2, 1.0),
        ).start()
        stack.callback(traffic.stop)
        narration = stack.enter_context(open(tmp / "narration.txt", "w", encoding="utf-8"))
        tail = EventTail(db, Narrator(Console(file=narration)))
        # Normal traffic until every device has reported a whole drift window of it.
        wait_until(
            lambda: len(_windows(db)) >= len(DEVICES), 40, "no drift window before the shift"
        )
        result.before_shift = _windows(db)
        traffic.shift()
        deadline = time.monotonic() + 95
        for kind in MILESTONES:
            if tail.wait_for(kind, deadline) is None:
                result.error = f"no {kind!r} event in time; see {tmp}"
                break
        if result.error is None:
            try:
                wait_until(lambda: all_on(db, DEVICES, "loan@v2"), 30, "not all on loan@v2")
            except Exception as exc:
                result.error = str(exc)
        tail.poll()
        result.events = list(tail.history)
        traffic.stop()
        app.wait_replies(10)
        result.error_replies = {
            rid: r["error"]
            for rid, r in app.replies.items()
            if "error" in r and rid != "bool-as-json"
        }
        result.served = len(app.replies)
        result.took_s = time.monotonic() - t0
        rows = db.conn.execute(
            "SELECT drifted FROM drift_windows WHERE variant = 'loan@v1' AND dataset_drift = 1"
        ).fetchall()
        result.drifted_v1 = {f for (doc,) in rows for f in json.loads(doc)}
        # What a user sees, through the real CLI while everything still runs.
        for name, args in (("fleet", ["fleet"]), ("drift", ["drift", "-m", "loan@v1", "-n", "5"])):
            out = subprocess.run(
                [EDGELOOP, "-w", str(ws.root), "--broker", broker.url, *args, "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            result.cli[name] = json.loads(out.stdout) if out.returncode == 0 else out.stderr
        result.logs = {a.log_path.name: a.log() for a in agents}
        result.logs["control.log"] = (tmp / "control.log").read_text(errors="replace")
        yield result


def _windows(db: ControlDB) -> list[tuple[str, int, str]]:
    """(device, dataset_drift, drifted features) of loan@v1's windows so far."""
    rows = db.conn.execute(
        "SELECT device, dataset_drift, drifted FROM drift_windows WHERE variant = 'loan@v1'"
    ).fetchall()
    return [tuple(r) for r in rows]


def test_the_loop_closes_on_a_loan_book(loop: Loop):
    kinds = [e["kind"] for e in loop.events]
    assert loop.error is None, (
        f"{loop.error}; events: {[(e['kind'], e['message']) for e in loop.events]}"
    )
    for kind in MILESTONES:
        assert kind in kinds, kind
    registered = next(e for e in loop.events if e["kind"] == "registered")
    assert "loan@v2" in registered["message"] and "stage challenger" in registered["message"]
    decision = next(e for e in loop.events if e["kind"] == "ab_decision")
    assert "promot" in decision["message"].lower(), decision["message"]
    # Retraining ran once: no failure and no retry loop.
    failures = [e for e in loop.events if "fail" in e["kind"]]
    assert failures == [], failures
    assert kinds.count("registered") == 1
    assert loop.took_s < 115, f"the loop took {loop.took_s:.0f} s"
    # Every request answered, the new band the model never saw included.
    assert loop.served > 1000 and loop.error_replies == {}, list(loop.error_replies.items())[:5]
    fleet = loop.cli["fleet"]
    assert isinstance(fleet, list), fleet
    assert {(r["device"], r["online"], r["in_sync"]) for r in fleet} == {
        (d, True, True) for d in DEVICES
    }
    for name, text in loop.logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"


def test_the_shift_is_seen_as_data_drift_on_the_features_that_moved(loop: Loop):
    # The debt ratio now in percent and more open accounts; late payments did not move.
    # (income_band's share tripled too: categorical drift is wired on the agent by
    # issue 11; until then the band is not among the monitored features.)
    assert {"debt_ratio", "open_accounts"} <= loop.drifted_v1, loop.drifted_v1
    assert "late_payments" not in loop.drifted_v1
    # `edgeloop drift` tells the same story, feature by feature.
    windows = loop.cli["drift"]
    assert isinstance(windows, list) and windows, windows
    verdicts = {(f["name"], f["verdict"].split(" ")[0]) for w in windows for f in w["features"]}
    assert ("debt_ratio", "drift") in verdicts and ("late_payments", "ok") in verdicts
    # And no systematic false alarm on the data the model was trained on. Each window is
    # one test at alpha = 5 % family-wise (BH over numeric, categorical and PCA tests), so
    # one of the two devices' first windows flagging one feature happens by chance (with
    # this seed: income_band on loan-1, chi2 p = 0.002); a schema or encoding mistake
    # (a bool typed float, a band encoded differently) flags both devices.
    assert len(loop.before_shift) >= 2, loop.before_shift
    flagged = [json.loads(drifted) for _, flag, drifted in loop.before_shift if flag]
    assert len(flagged) <= 1 and all(len(f) <= 1 for f in flagged), loop.before_shift


def test_the_retrained_model_keeps_every_column_kind(loop: Loop):
    registry = Registry.for_workspace(loop.ws, create=False, sync_remote=False)
    v1, v2 = (registry.get(f"loan@{v}") for v in ("v1", "v2"))
    for mv in (v1, v2):
        meta = mv.metadata
        assert meta["features"] == [
            "employed",
            "income_band",
            "open_accounts",
            "late_payments",
            "income_k",
            "debt_ratio",
        ]
        assert meta["categorical_features"] == ["income_band"]
    # Retrained from captured JSON (the bool as 0/1, the band as text) plus view rows:
    # the same input schema as the champion's, not columns of a new kind.
    assert v2.metadata["input_schema"] == v1.metadata["input_schema"]
    # The view has no event timestamp: v1's holdout is a seeded random sample.
    assert v1.metadata["split"] == "random"
    assert registry.stages("loan")["champion"] == "v2"


def test_a_bool_feature_sent_as_a_number_is_served(loop: Loop):
    reply = loop.replies["bool-as-number"]
    assert "error" not in reply and reply["prediction"] in (0, 1), reply


def test_a_bool_feature_sent_as_json_true_is_served(loop: Loop):
    reply = loop.replies["bool-as-json"]
    assert "error" not in reply and reply["prediction"] in (0, 1), reply
