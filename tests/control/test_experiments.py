"""ExperimentManager on real parts: SQLite, a git+DVC registry, Mosquitto, the agent's metrics.

Telemetry enters the control database through the daemon's own ingestion function
(``handle_report``) in the agent's own report format (its ``Metrics`` class produces the
per-variant counters), so the aggregation is tested on exactly what the fleet sends.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeloop_agent.metrics import Metrics
from edgeloop_agent.telemetry import json_safe
from edgeloop_control.demo.sensors import generate
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.mqtt import ControlClient
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.policies.experiments import (
    ExperimentConfig,
    ExperimentError,
    ExperimentManager,
)
from edgeloop_control.registry import Registry
from edgeloop_control.stats import (
    BinaryStats,
    ContinuousStats,
    MixtureSPRT,
    sample_ratio_mismatch,
    t_interval,
    two_proportion_ztest,
    welch_ttest,
    wilson_interval,
)
from edgeloop_control.training import TrainConfig, train
from tests.integration.models import sensor_model
from tests.mqtt_helpers import Probe
from tests.pgserver import follow_engine

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines

CHAMP, CHALL = "sensor@v1", "sensor@v2"


@functools.cache
def regression_onnx() -> bytes:
    """A real regressor (motor current from the other readings), trained by the pipeline."""
    frame = generate(1200, seed=3).drop(columns=["pump_id", "fault"])
    result = train(frame, TrainConfig(target="current_a", algo="hgb", timestamp="ts", seed=0))
    return result.onnx_bytes


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with sensor v1..v3 (classifiers) and load v1..v2 (regressors) registered."""
    ws = Workspace.init(tmp_path_factory.mktemp("experiments") / "ws")
    registry = Registry.for_workspace(ws)
    for version, algo in (("v1", "logreg"), ("v2", "rf"), ("v3", "hgb")):
        registry.register("sensor", sensor_model(version, algo=algo).data, {"algorithm": algo})
    for _ in range(2):
        registry.register("load", regression_onnx(), {"algorithm": "hgb"})
    # The devices the tests target are in the inventory, as after their first connection:
    # only known devices may be targeted.
    db = ControlDB(ws.control_db)
    for device in ("d1", "d2", "d3"):
        db.upsert_device(device)
    db.close()
    return ws.root


@dataclass
class Env:
    ws: Workspace
    db: ControlDB
    client: ControlClient
    broker: PrivateBroker

    def manager(self, *, db: ControlDB | None = None, rollouts: Any = None, **config: Any):
        return ExperimentManager(
            self.ws, db or self.db, self.client, rollouts=rollouts,
            config=ExperimentConfig(**config),
        )  # fmt: skip

    def events(self, kind: str) -> list[dict[str, Any]]:
        return self.db.events(kind=kind)

    @property
    def registry(self) -> Registry:
        return Registry.for_workspace(self.ws, create=False, sync_remote=False)


@pytest.fixture
def env(template: Path, tmp_path: Path, broker: PrivateBroker) -> Iterator[Env]:
    shutil.copytree(template, tmp_path / "ws", symlinks=True)
    follow_engine(tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    db = ControlDB(ws.control_db)
    client = ControlClient(broker.url).connect()
    try:
        yield Env(ws, db, client, broker)
    finally:
        client.close()
        db.close()


class Device:
    """One device's telemetry, produced by the agent's own Metrics and report layout."""

    def __init__(self, name: str, model: str = "sensor") -> None:
        self.name = name
        self.model = model
        self.metrics = Metrics()
        self.seq = 0

    def serve(
        self,
        variant: str,
        requests: int,
        *,
        labelled: int = 0,
        correct: int = 0,
        errors: int = 0,
        latency_s: float = 0.002,
        residuals: list[float] | None = None,
    ) -> None:
        for i in range(requests):
            if i < errors:
                self.metrics.record_request(variant, None, error="inference_failed", predictions=0)
            else:
                self.metrics.record_request(variant, latency_s)
        for i in range(labelled):
            self.metrics.record_classification(variant, i < correct)
        for e in residuals or []:
            self.metrics.record_regression(variant, e)

    def report(
        self, db: ControlDB, experiment: str | None, drift: list[dict[str, Any]] | None = None
    ) -> bool:
        self.seq += 1
        report_id = f"{self.name}:b00t:{self.seq}"
        snapshot = self.metrics.snapshot(reset=True)
        now = time.time()
        payload = {
            "report_id": report_id,
            "device": self.name,
            "ts": now,
            "interval_s": 1.0,
            "agent_version": "test",
            "revision": 2,
            "experiment": experiment,
            "variants": {
                v: {
                    "name": v.split("@")[0],
                    "version": v.split("@")[1],
                    "role": "serve",
                    "sha256": "0" * 64,
                    "drift_monitoring": "on",
                }
                for v in snapshot["variants"]
            },
            "metrics": snapshot,
            "drift": drift or [],
            "drift_windows_dropped": 0,
            "concept_drift": {},
            "feedback": {},
            "capture": {"rate": 0.0, "captured": 0, "failures": 0},
            "outbox": {"depth": 0, "dropped": 0},
            "process": {
                "rss_bytes": 150_000_000,
                "peak_rss_bytes": 150_000_000,
                "cpu_percent": 3.0,
                "cpu_seconds": 1.0,
            },
        }
        envelope = {
            "id": report_id,
            "device_id": self.name,
            "kind": "report",
            "ts": now,
            "payload": json_safe(payload),
        }
        return handle_report(db, json.loads(json.dumps(envelope)))


def drift_window(
    variant: str, *, drifted: bool, end: float = 1000.0, output_p: float = 0.5
) -> dict[str, Any]:
    """A count window as the agent's DriftReport.to_dict() lays it out."""
    features = [
        {"name": "vibration_mm_s", "n": 500, "psi": 0.41 if drifted else 0.01, "ks_p": 1e-9,
         "ks_p_adjusted": 1e-8 if drifted else 0.9, "drift": drifted, "reasons": []},
        {"name": "flow_m3_h", "n": 500, "psi": 0.02, "ks_p": 0.5, "ks_p_adjusted": 0.9,
         "drift": False, "reasons": []},
    ]  # fmt: skip
    return {
        "window": {"kind": "count", "start": end - 500, "end": end, "n_rows": 500},
        "enough_data": True,
        "dataset_drift": drifted,
        "drifted_features": ["vibration_mm_s"] if drifted else [],
        "features": features,
        "output": {
            "name": "score",
            "n": 500,
            "ks_p": output_p,
            "ks_p_adjusted": output_p,
            "drift": output_p < 0.05,
            "reasons": ["ks"] if output_p < 0.05 else [],
        },
        "variant": variant,
        "version": variant.split("@")[1],
    }


def warm_up(db: ControlDB, exp_id: str, *devices: Device) -> None:
    """Each device's first report in an experiment is dropped by design (it can mix in
    traffic served before the split); send one with pre-split champion traffic."""
    for d in devices:
        d.serve(f"{d.model}@v1", 500, labelled=400, correct=100)
        d.report(db, exp_id)


def desired(probe: Probe, device: str) -> dict[str, Any]:
    from edgeloop_control.infra.signing import open_desired

    probe.subscribe(f"edgeloop/{device}/desired")
    while True:
        msg = probe.next(5, topic=f"edgeloop/{device}/desired")
        if msg.payload:
            return open_desired(msg.payload)


def retained_desired(broker: PrivateBroker, device: str) -> dict[str, Any]:
    probe = Probe(broker.url)
    try:
        return desired(probe, device)
    finally:
        probe.close()


# -- starting ---------------------------------------------------------------------------


def test_start_splits_traffic_and_records_everything(env: Env) -> None:
    m = env.manager()
    exp = m.start("sensor", "v1", CHALL, ["d1", "d2"], weight=30, cause="test")
    assert exp["id"] == "ab-sensor-1"
    assert exp["state"] == "running"
    assert exp["weights"] == {"champion": 70.0, "challenger": 30.0}
    assert (exp["champion"], exp["challenger"], exp["kind"]) == (CHAMP, CHALL, "binary")
    for device in ("d1", "d2"):
        doc = retained_desired(env.broker, device)
        assert doc["experiment"] == "ab-sensor-1"
        assert doc["allocation"]["experiment_id"] == "ab-sensor-1"
        assert {m["variant"]: m["weight"] for m in doc["models"]} == {CHAMP: 70.0, CHALL: 30.0}
        assert env.db.desired(device)[1] == doc
    assert env.registry.stages("sensor").get("challenger") == "v2"
    [event] = env.events("ab_started")
    assert "sensor@v1 (70%) vs sensor@v2 (30%)" in event["message"]
    assert event["subject"] == "ab-sensor-1"

    # The id counts per model, and a device takes part in one experiment at a time.
    # (The refusal is the desired-state owner's, naming how to end the holder.)
    with pytest.raises(
        ExperimentError,
        match=r"d2 belongs to running experiment ab-sensor-1; .*ab stop ab-sensor-1",
    ):
        m.start("sensor", "v1", "v3", ["d2", "d3"])
    second = m.start("sensor", "v1", "v3", ["d3"])
    assert second["id"] == "ab-sensor-2"
    assert [e["id"] for e in m.running_for("sensor")] == ["ab-sensor-1", "ab-sensor-2"]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("sensor", "v1", "v1", ["d1"]), {}, "champion and challenger are both sensor@v1"),
        (("sensor", "v1", "v9", ["d1"]), {}, "v9"),
        (("sensor", "v1", "load@v2", ["d1"]), {}, "is a version of 'load', not of 'sensor'"),
        (("sensor", "v1", "v2", []), {}, "at least one --device"),
        (("sensor", "v1", "v2", "d1"), {}, "not one string"),
        (("sensor", "v1", "v2", ["bad/id"]), {}, "device id"),
        (("sensor", "v1", "v2", ["d1"]), {"weight": 100}, r"within \(0%, 100%\)"),
        (("sensor", "v1", "v2", ["d1"]), {"weight": 0}, r"within \(0%, 100%\)"),
        (("nosuch", "v1", "v2", ["d1"]), {}, "nosuch"),
    ],
)
def test_start_validation(env: Env, args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        env.manager().start(*args, **kwargs)
    assert env.db.all_desired() == {}
    assert env.manager().status() == []


def test_start_refuses_devices_of_another_model_and_the_current_champion(env: Env) -> None:
    m = env.manager()
    m.start("load", "v1", "v2", ["d1"])
    m.stop("ab-load-1", "wrong model")
    with pytest.raises(ExperimentError, match="d1 serves load, not sensor"):
        m.start("sensor", "v1", "v2", ["d1"])
    env.registry.promote("sensor", "v2", "champion")
    with pytest.raises(ExperimentError, match="already the registry's champion"):
        m.start("sensor", "v1", "v2", ["d2"])


def test_config_from_workspace(env: Env) -> None:
    path = env.ws.root / "edgeloop.toml"
    path.write_text(
        path.read_text() + "\n[experiment]\nalpha = 0.01\nmin_samples_per_arm = 30\n"
        "challenger_weight = 10\nmax_duration_s = 0\n"
    )
    ws = Workspace.open(env.ws.root)
    cfg = ExperimentManager(ws, env.db, None).config
    # A bare number above 1 is a percent (configs written before shares were fractions).
    assert (cfg.alpha, cfg.min_samples_per_arm, cfg.challenger_weight) == (0.01, 30, 0.1)
    assert cfg.max_duration_s is None and cfg.tau is None and cfg.auto_decide is True
    path.write_text(path.read_text() + "max_p99 = 3\n")
    with pytest.raises(ExperimentError, match=r"unknown key.*max_p99.*known keys"):
        ExperimentManager(Workspace.open(env.ws.root), env.db, None)
    with pytest.raises(ExperimentError, match="alpha must be in"):
        ExperimentConfig(alpha=1.5)


# -- aggregation and statistics -----------------------------------------------------------


def test_totals_and_statistics_match_the_stats_package(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    d1, d2, outsider = Device("d1"), Device("d2"), Device("d9")
    warm_up(env.db, exp_id, d1, d2)
    # Two reports per device; a shadow variant and a device outside the experiment are
    # ignored; a re-delivered report is stored once.
    d1.serve(CHAMP, 300, labelled=250, correct=220, errors=3)
    d1.serve(CHALL, 280, labelled=240, correct=225, errors=1)
    d1.serve("sensor@v3", 280, labelled=240, correct=10)
    assert d1.report(env.db, exp_id)
    d2.serve(CHAMP, 200, labelled=150, correct=130)
    d2.serve(CHALL, 220, labelled=160, correct=150, latency_s=0.004)
    d2.report(env.db, exp_id)
    outsider.serve(CHALL, 1000, labelled=1000, correct=0)
    outsider.report(env.db, exp_id)
    outsider.report(env.db, exp_id)
    d1.serve(CHAMP, 100, labelled=100, correct=85)
    d1.serve(CHALL, 100, labelled=100, correct=95)
    d1.report(env.db, exp_id)
    m.tick(time.time())

    a, b = BinaryStats(500, 435), BinaryStats(500, 470)
    [st] = m.status(exp_id)
    champ, chall = st["variants"]["champion"], st["variants"]["challenger"]
    assert (champ["n"], champ["successes"], chall["n"], chall["successes"]) == (500, 435, 500, 470)
    assert (champ["requests"], chall["requests"]) == (600, 600)
    assert (champ["errors"], chall["errors"]) == (3, 1)
    assert champ["error_rate"] == pytest.approx(3 / 600)
    assert chall["p99_ms"] == pytest.approx(4.0, rel=0.06)  # histogram bucket precision
    for arm, stats in (("champion", a), ("challenger", b)):
        ci = wilson_interval(stats, 0.95)
        assert st["variants"][arm]["metric"] == ci.estimate
        assert st["variants"][arm]["ci"] == [ci.lower, ci.upper]
    z = two_proportion_ztest(a, b)
    assert st["fixed_horizon"]["p_value"] == z.p_value
    assert st["fixed_horizon"]["statistic"] == z.statistic
    reference = MixtureSPRT("binary").update_totals(a, b)
    assert st["sequential"]["p_value"] == reference.p_value
    assert st["sequential"]["confidence_sequence"] == list(reference.confidence_sequence)
    srm = sample_ratio_mismatch(
        {"champion": 600, "challenger": 600}, {"champion": 50, "challenger": 50}
    )
    assert st["srm"]["p_value"] == srm.p_value and st["srm"]["flag"] is False
    assert st["srm"]["source"] == "assignments"
    assert st["metric"] == "accuracy" and st["higher_is_better"] is True
    assert [g["name"] for g in st["guardrails"]] == ["error_rate", "latency_p99", "drift"]
    assert all(g["passed"] for g in st["guardrails"])
    # 0.87 vs 0.94 on 500 each is decisive: promoted (no rollout manager here).
    assert st["state"] == "promoted"
    assert st["decision"]["action"] == "promote"
    assert st["decision"]["reason"] == reference.decision([]).reason
    [look] = m.looks(exp_id)
    assert (look["n_champion"], look["n_challenger"]) == (500, 500)
    assert look["p_value"] == reference.p_value and look["fixed_p_value"] == z.p_value
    assert look["cs_low"] == reference.confidence_sequence[0]


def test_regression_uses_absolute_error_with_exact_second_moment(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("load", "v1", "v2", ["d1"])["id"]
    assert m.status(exp_id)[0]["metric"] == "mean absolute error"
    d1 = Device("d1", model="load")
    warm_up(env.db, exp_id, d1)
    import numpy as np

    rng = np.random.default_rng(5)
    res_a = rng.normal(0.0, 2.0, 150)
    res_b = rng.normal(0.3, 1.5, 140)
    d1.serve("load@v1", 150, residuals=list(res_a))
    d1.serve("load@v2", 140, residuals=list(res_b))
    d1.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    loss_a = ContinuousStats.from_values(np.abs(res_a))
    loss_b = ContinuousStats.from_values(np.abs(res_b))
    for arm, stats in (("champion", loss_a), ("challenger", loss_b)):
        ci = t_interval(stats, 0.95)
        assert st["variants"][arm]["n"] == stats.n
        assert st["variants"][arm]["metric"] == pytest.approx(ci.estimate, rel=1e-12)
        assert st["variants"][arm]["std"] == pytest.approx(stats.std, rel=1e-9)
        assert st["variants"][arm]["ci"] == pytest.approx([ci.lower, ci.upper], rel=1e-9)
    welch = welch_ttest(loss_a, loss_b)
    assert st["fixed_horizon"]["p_value"] == pytest.approx(welch.p_value, rel=1e-9)
    reference = MixtureSPRT("continuous").update_totals(loss_a, loss_b)
    assert st["sequential"]["p_value"] == pytest.approx(reference.p_value, rel=1e-9)
    assert st["higher_is_better"] is False


def test_restart_continues_the_sequential_state_exactly(env: Env, tmp_path: Path) -> None:
    exp_id = env.manager().start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    reference = MixtureSPRT("binary")
    batches = [(120, 100, 120, 104), (150, 118, 150, 124), (130, 105, 130, 112)]
    totals = [0, 0, 0, 0]
    for i, (na, sa, nb, sb) in enumerate(batches):
        # Every look on a new manager with its own connection: a daemon restart each time.
        db = ControlDB(env.ws.control_db)
        try:
            m = env.manager(db=db)
            d1.serve(CHAMP, na, labelled=na, correct=sa)
            d1.serve(CHALL, nb, labelled=nb, correct=sb)
            d1.report(db, exp_id)
            m.tick(time.time())
            m.tick(time.time())  # idempotent: no new data, no new look
        finally:
            db.close()
        totals = [totals[0] + na, totals[1] + sa, totals[2] + nb, totals[3] + sb]
        reference.update_totals(
            BinaryStats(totals[0], totals[1]), BinaryStats(totals[2], totals[3])
        )
        stored = json.loads(
            env.db.conn.execute("SELECT test FROM experiments WHERE id = ?", (exp_id,)).fetchone()[
                0
            ]
        )
        assert stored == reference.to_dict(), f"after look {i + 1}"
    looks = env.manager().looks(exp_id)
    assert [lk["seq"] for lk in looks] == [1, 2, 3]
    assert [lk["p_value"] for lk in looks][-1] == reference.p_value
    assert reference.looks == 3 and reference.p_value < 1.0


def test_no_labels_means_continue_and_one_event(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    devices = [Device("d1"), Device("d2")]
    warm_up(env.db, exp_id, *devices)
    m.tick(time.time())
    assert env.events("ab_waiting_for_labels") == []  # nothing counted yet: nothing to say
    for _ in range(4):
        for d in devices:
            d.serve(CHAMP, 200)
            d.serve(CHALL, 200)
            d.report(env.db, exp_id)
        m.tick(time.time())
        m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "running" and st["decision"] is None
    assert st["evaluation"]["action"] == "continue"
    assert "no labelled outcomes yet" in st["evaluation"]["reason"]
    [event] = env.events("ab_waiting_for_labels")
    assert "800 requests served but no labelled outcomes" in event["message"]
    assert len(m.looks(exp_id)) == 4  # one per tick that saw new counts
    assert env.events("ab_decision") == []


# -- decisions ------------------------------------------------------------------------------


def test_error_rate_guardrail_rolls_back_before_any_label(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    champion_doc = env.db.desired("d1")[1]
    d1, d2 = Device("d1"), Device("d2")
    warm_up(env.db, exp_id, d1, d2)
    d1.serve(CHAMP, 60)
    d1.serve(CHALL, 60, errors=9)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "rolled_back"
    assert st["decision"]["action"] == "rollback"
    assert "error_rate (challenger error rate 15% (9/60) > limit 5%)" in st["decision"]["reason"]
    for device in ("d1", "d2"):
        doc = retained_desired(env.broker, device)
        assert [(m["variant"], m["weight"]) for m in doc["models"]] == [(CHAMP, 100.0)]
        assert doc["experiment"] != exp_id
        assert doc["revision"] == champion_doc["revision"] + 1
    assert "challenger" not in env.registry.stages("sensor")
    [decision] = env.events("ab_decision")
    assert decision["message"].startswith(f"{exp_id}: Rolling back: challenger failed guardrail")
    [done] = env.events("ab_rolled_back")
    assert "d1, d2 back on sensor@v1 at 100%" in done["message"]
    # Later telemetry and ticks change nothing: decided once.
    d1.serve(CHALL, 60, labelled=60, correct=60)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    assert len(env.events("ab_decision")) == 1 and m.status(exp_id)[0]["state"] == "rolled_back"


def test_latency_and_drift_guardrails(env: Env) -> None:
    m = env.manager(max_p99_ms=20)
    slow = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, slow, d1)
    d1.serve(CHAMP, 80, latency_s=0.003)
    d1.serve(CHALL, 80, latency_s=0.035)
    d1.report(env.db, slow)
    m.tick(time.time())
    [st] = m.status(slow)
    assert st["state"] == "rolled_back"
    assert "latency_p99 (challenger p99 3" in st["decision"]["reason"]
    assert "> limit 20 ms" in st["decision"]["reason"]

    drifty = m.start("sensor", "v1", "v3", ["d2"])["id"]
    d2 = Device("d2")
    warm_up(env.db, drifty, d2)
    d2.serve(CHAMP, 10)
    d2.report(env.db, drifty, drift=[drift_window("sensor@v1", drifted=True)])
    m.tick(time.time())
    assert m.status(drifty)[0]["state"] == "running"  # the champion's drift is not a guardrail
    # Input drift on the challenger is not the challenger's fault: both arms see the same
    # inputs (it used to roll back every long experiment; docs/experiments.md).
    windows = [drift_window("sensor@v3", drifted=False), drift_window("sensor@v3", drifted=True)]
    d2.report(env.db, drifty, drift=windows)
    m.tick(time.time())
    assert m.status(drifty)[0]["state"] == "running"
    # Both outputs moved in the same report: the inputs changed, excused.
    d2.report(
        env.db,
        drifty,
        drift=[
            drift_window("sensor@v1", drifted=True, output_p=1e-12),
            drift_window("sensor@v3", drifted=True, output_p=1e-12),
        ],
    )
    m.tick(time.time())
    [st] = m.status(drifty)
    assert st["state"] == "running"
    drift_check = next(g for g in st["guardrails"] if g["name"] == "drift")
    assert "1 more excused" in drift_check["reason"], drift_check
    # Only the challenger's output left its reference, on the same inputs: unfit.
    d2.report(
        env.db,
        drifty,
        drift=[
            drift_window("sensor@v1", drifted=False, output_p=0.4),
            drift_window("sensor@v3", drifted=False, output_p=1e-9),
        ],
    )
    m.tick(time.time())
    [st] = m.status(drifty)
    assert st["state"] == "rolled_back"
    assert "drift (the challenger's output drifted from its own reference on d2 (KS p=1e-09" \
        in st["decision"]["reason"]  # fmt: skip


def test_sample_ratio_mismatch_rolls_back(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 1000, labelled=300, correct=270)
    d1.serve(CHALL, 800, labelled=300, correct=271)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["srm"]["flag"] is True
    assert st["state"] == "rolled_back"
    assert (
        "sample_ratio (sample ratio mismatch on requests: champion 1000 (expected 900.0)"
        in (st["decision"]["reason"])
    )


def test_auto_promotion_sets_the_champion_and_starts_a_rollout(env: Env) -> None:
    from edgeloop_control.policies.rollout import RolloutManager

    rollouts = RolloutManager(env.ws, env.db, env.client)
    m = env.manager(rollouts=rollouts)
    # A device outside the experiment already runs the model: the rollout covers it too.
    env.manager().start("sensor", "v1", "v3", ["d3"])
    env.manager().stop("ab-sensor-1", "setting up a fleet")
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    d1, d2 = Device("d1"), Device("d2")
    warm_up(env.db, exp_id, d1, d2)
    for d in (d1, d2):
        d.serve(CHAMP, 200, labelled=200, correct=150)
        d.serve(CHALL, 200, labelled=200, correct=180)
        d.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "promoted" and st["pending"] == []
    assert st["decision"]["action"] == "promote"
    assert st["decision"]["reason"].startswith("Promoting: challenger accuracy is higher")
    stages = env.registry.stages("sensor")
    assert stages["champion"] == "v2" and "challenger" not in stages
    [promoted] = env.events("ab_promoted")
    assert (
        promoted["message"] == f"{exp_id}: sensor@v2 is now the champion of sensor (was sensor@v1)"
    )
    [ro] = rollouts.status()
    assert st["rollout"]["id"] == ro["id"]
    assert sorted(st["rollout"]["devices"]) == ["d1", "d2", "d3"]
    assert len(env.events("ab_rollout_started")) == 1
    m.tick(time.time())
    assert len(rollouts.status()) == 1  # never twice
    # The rollout owns its devices now (the desired-state owner refuses, naming it). Needs
    # the rollout policy claiming its devices (issue 9, policies/rollout).
    with pytest.raises(
        ExperimentError, match=f"d3 belongs to running rollout {ro['id']}; .*rollout abort"
    ):
        m.start("sensor", "v2", "v3", ["d3"])


def test_promotion_without_a_rollout_manager_leaves_the_rollout_pending(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 300, labelled=300, correct=200)
    d1.serve(CHALL, 300, labelled=300, correct=280)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "promoted" and st["pending"] == ["rollout"]
    assert env.registry.stages("sensor")["champion"] == "v2"
    [pending] = env.events("ab_pending")
    assert "`edgeloop serve` starts the rollout" in pending["message"]


def test_manual_mode_waits_for_an_operator(env: Env) -> None:
    m = env.manager(auto_decide=False)
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    with pytest.raises(ExperimentError, match=r"has not reached a decision yet.*--force"):
        m.promote(exp_id)
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 300, labelled=300, correct=200)
    d1.serve(CHALL, 300, labelled=300, correct=280)
    d1.report(env.db, exp_id)
    for _ in range(3):
        m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "decided" and st["decision"]["action"] == "promote"
    [event] = env.events("ab_decision")
    assert f"Awaiting an operator: `edgeloop ab promote {exp_id}`" in event["message"]
    assert env.registry.stages("sensor").get("champion") is None
    # Data keeps flowing into the report while it waits; the decision stays.
    d1.serve(CHAMP, 50, labelled=50, correct=30)
    d1.serve(CHALL, 50, labelled=50, correct=48)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    assert m.status(exp_id)[0]["variants"]["champion"]["n"] == 350
    st = m.promote(exp_id)
    assert st["state"] == "promoted"
    assert st["decision"]["source"] == "operator"
    assert st["decision"]["recommended"]["action"] == "promote"
    assert env.registry.stages("sensor")["champion"] == "v2"
    with pytest.raises(ExperimentError, match="is promoted; only a running or decided"):
        m.stop(exp_id)


def test_manual_rollback_recommendation_needs_force_to_promote(env: Env) -> None:
    m = env.manager(auto_decide=False)
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 300, labelled=300, correct=280)
    d1.serve(CHALL, 300, labelled=300, correct=200)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    assert m.status(exp_id)[0]["decision"]["action"] == "rollback"
    with pytest.raises(ExperimentError, match=r"was decided 'rollback'.*--force"):
        m.promote(exp_id)
    st = m.stop(exp_id, "agreed")
    assert st["state"] == "rolled_back"
    assert st["decision"]["reason"] == "Stopped by an operator: agreed."
    assert [e["message"] for e in env.events("ab_stopped")] == [
        f"{exp_id}: Stopped by an operator: agreed."
    ]


def test_stop_leaves_devices_whose_desired_state_changed_alone(env: Env) -> None:
    """A running experiment owns its devices; once stopped they are free at once, and a
    rollback still pending leaves alone a device someone deployed to meanwhile."""
    from edgeloop_control.fleet.desired import DesiredState, DeviceOwned
    from edgeloop_control.infra.signing import DesiredSigner

    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    desired = DesiredState(env.db, env.client, "edgeloop", DesiredSigner.for_workspace(env.ws))
    v3 = env.registry.get("sensor@v3")
    with pytest.raises(DeviceOwned, match=f"d2 belongs to running experiment {exp_id}"):
        desired.publish("d2", desired.plan("d2", [(v3, 100.0)], []))
    # Stopped from a process without a broker: the rollback waits for one, the devices do not.
    st = ExperimentManager(env.ws, env.db, None).stop(exp_id, "manual deploy")
    assert st["state"] == "rolling_back"
    assert st["pending"] == ["desired:d1", "desired:d2", "registry"]
    assert desired.owners(["d1", "d2"]) == {}
    desired.publish("d2", desired.plan("d2", [(v3, 100.0)], []))  # someone deploys v3 to d2
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["state"] == "rolled_back"
    assert [m["variant"] for m in retained_desired(env.broker, "d1")["models"]] == [CHAMP]
    assert [m["variant"] for m in retained_desired(env.broker, "d2")["models"]] == ["sensor@v3"]
    [done] = env.events("ab_rolled_back")
    assert "d2 left alone" in done["message"]


def test_two_managers_on_one_database_decide_once(env: Env) -> None:
    """The daemon and a CLI command share control.sqlite: the state is compare-and-set."""
    exp_id = env.manager().start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 300, labelled=300, correct=200)
    d1.serve(CHALL, 300, labelled=300, correct=280)
    d1.report(env.db, exp_id)
    other_db = ControlDB(env.ws.control_db)
    try:
        a, b = env.manager(), env.manager(db=other_db)
        a.tick(time.time())
        b.tick(time.time())
        with pytest.raises(ExperimentError, match="promoted"):
            b.stop(exp_id)
    finally:
        other_db.close()
    assert len(env.events("ab_decision")) == 1
    assert len(env.events("ab_promoted")) == 1


def test_max_duration_ends_without_a_winner(env: Env) -> None:
    m = env.manager(max_duration_s=60)
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 150, labelled=150, correct=130)
    d1.serve(CHALL, 150, labelled=150, correct=131)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    assert m.status(exp_id)[0]["state"] == "running"
    m.tick(time.time() + 61)
    [st] = m.status(exp_id)
    assert st["state"] == "rolled_back"
    assert st["decision"]["source"] == "max_duration"
    assert st["decision"]["reason"].startswith("Ending without a winner: the maximum duration")


def test_broker_outage_during_rollback_is_retried(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    env.broker.stop()
    m.publisher = ControlClient(env.broker.url)  # never connected: every publish fails
    st = m.stop(exp_id, "outage")
    assert st["state"] == "rolling_back" and st["pending"] == ["desired:d1", "registry"]
    assert "publish" in st["last_error"]
    [failed] = env.events("ab_action_failed")
    assert failed["message"].startswith(f"{exp_id}: desired:d1 failed, retrying in 30 s")
    env.broker.start()
    client = ControlClient(env.broker.url).connect()
    try:
        m.publisher = client
        m.tick(time.time())  # before the retry time: nothing happens
        assert m.status(exp_id)[0]["state"] == "rolling_back"
        m.tick(time.time() + 31)
        assert m.status(exp_id)[0]["state"] == "rolled_back"
        assert [m["variant"] for m in retained_desired(env.broker, "d1")["models"]] == [CHAMP]
    finally:
        client.close()


def test_actions_run_in_one_process_at_a_time(env: Env) -> None:
    """While the daemon carries out an experiment's actions, a CLI stop leaves them to it."""
    exp_id = env.manager().start("sensor", "v1", "v2", ["d1"])["id"]
    daemon_db = ControlDB(env.ws.control_db)
    try:
        daemon, cli = env.manager(db=daemon_db), env.manager()
        # The daemon is mid-action.
        assert daemon.store.take_lease(exp_id, daemon.parts.holder, time.time())
        st = cli.stop(exp_id, "operator")
        assert st["state"] == "rolling_back" and st["pending"] == ["desired:d1", "registry"]
        assert env.db.desired("d1")[1]["experiment"] == exp_id  # nothing published twice
        daemon.tick(time.time())  # the daemon finishes (and releases) the work
    finally:
        daemon_db.close()
    [st] = env.manager().status(exp_id)
    assert st["state"] == "rolled_back" and st["pending"] == []
    assert [m["variant"] for m in retained_desired(env.broker, "d1")["models"]] == [CHAMP]
    assert len(env.events("ab_rolled_back")) == 1
