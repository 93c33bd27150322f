"""Categorical and multivariate drift end to end: a model trained by the product's own
pipeline on numeric and categorical features, served by a real agent over Mosquitto; its
telemetry windows flag a category band whose share fell from 10 % to 1 % and a broken
correlation, and stay quiet on an unchanged stream. Then the control node ingests those
windows and ``edgeloop drift --json`` shows the categorical p-value and the PCA row."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from edgeloop_control.cli import app
from edgeloop_control.fleet.ingest import handle_report
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.training import TrainConfig, train
from tests.integration.models import Artifact
from tests.integration.test_agent_e2e import publish_deployment, wait_status
from tests.mqtt_helpers import AgentProcess, Probe

DEVICE = "catdrift-1"
WINDOW = 1000
REF = {"A": 0.5, "B": 0.33, "band": 0.1, "C": 0.07}
DROPPED = {"A": 0.5, "B": 0.33, "band": 0.01, "C": 0.16}


def _rows(rng: np.random.Generator, n: int, shares: dict[str, float], broken: bool = False):
    base = rng.normal(size=(n, 2))
    x2 = base[:, 0] + 0.1 * rng.normal(size=n)
    if broken:
        x2 = rng.permutation(x2)  # same marginal, its link to x1 gone
    keys = list(shares)
    kind = [keys[i] for i in rng.choice(len(keys), size=n, p=list(shares.values()))]
    return pd.DataFrame(
        {"x1": base[:, 0], "x2": x2, "x3": base[:, 1], "x4": -base[:, 1] + 0.1 * rng.normal(size=n),
         "kind": kind}
    )  # fmt: skip


@functools.cache
def _model() -> Artifact:
    rng = np.random.default_rng(0)
    frame = _rows(rng, 4000, REF)
    logit = frame["x1"] - frame["x3"] + (frame["kind"] == "band") * 1.5
    frame["y"] = (rng.random(4000) < 1 / (1 + np.exp(-logit))).astype(int)
    frame["ts"] = np.arange(4000)
    result = train(frame, TrainConfig(target="y", algo="logreg", timestamp="ts", seed=0))
    profile = result.meta.profile
    assert profile is not None and profile["categorical"][0]["name"] == "kind"
    assert profile["pca"]["features"] == ["x1", "x2", "x3", "x4"]
    return Artifact("catdrift", "v1", result.onnx_bytes, ["x1", "x2", "x3", "x4", "kind"])


def _send(probe: Probe, frame: pd.DataFrame, tag: str) -> None:
    records = frame.to_dict("records")
    for i in range(0, len(records), 100):
        probe.publish(
            f"edgeloop/{DEVICE}/predict",
            {"id": f"{tag}-{i}", "rows": records[i : i + 100]},
            response_topic="app/replies",
        )
        time.sleep(0.02)


def _windows(probe: Probe, want: int, timeout: float = 60.0) -> list[dict]:
    reports, windows = [], []
    deadline = time.monotonic() + timeout
    while len(windows) < want and time.monotonic() < deadline:
        try:
            msg = probe.next(1.0, topic=f"edgeloop/{DEVICE}/telemetry")
        except Exception:
            continue
        env = json.loads(msg.payload)
        reports.append(env)
        windows += env["payload"]["drift"]
    assert len(windows) >= want, f"only {len(windows)} drift windows arrived"
    return reports, windows


def test_band_drop_and_correlation_break_flagged_through_agent_and_cli(
    broker, probe, agents, tmp_path: Path
) -> None:
    model = _model()
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe(f"edgeloop/{DEVICE}/telemetry")
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=["--telemetry-interval", "0.5", "--drift-window", str(WINDOW)],
    ).start()
    agents.append(agent)
    publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    rng = np.random.default_rng(1)
    _send(probe, _rows(rng, 2 * WINDOW, REF), "same")
    _send(probe, _rows(rng, WINDOW, DROPPED), "band")
    _send(probe, _rows(rng, WINDOW, REF, broken=True), "corr")
    reports, windows = _windows(probe, 4)
    same, band, corr = windows[:2], windows[2], windows[3]
    for w in same:
        assert not w["dataset_drift"], w
    kind = {f["name"]: f for f in band["features"]}["kind"]
    assert kind["kind"] == "categorical" and kind["drift"] and "chi2" in kind["reasons"]
    assert kind["chi2_p_adjusted"] < 1e-6 and band["dataset_drift"]
    assert band["drifted_features"] == ["kind"]
    assert not any(f["drift"] for f in corr["features"])
    assert corr["multivariate"]["drift"] and corr["dataset_drift"]

    # The control node: ingest the very envelopes, then `edgeloop drift --json`.
    ws = Workspace.init(tmp_path / "ws")
    root = ws.root
    db = ControlDB(ws.control_db)
    try:
        for env in reports:
            handle_report(db, env, DEVICE)
    finally:
        db.close()
    result = CliRunner().invoke(app, ["-w", str(root), "drift", "--json", "-n", "10"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert len(shown) >= 4
    by_end = sorted(shown, key=lambda w: w["end"])
    flagged = [w for w in by_end if w["dataset_drift"]]
    cat = [f for w in flagged for f in w["features"] if f["kind"] == "categorical" and f["drift"]]
    assert cat and cat[0]["name"] == "kind" and cat[0]["chi2_p_adjusted"] < 1e-6
    assert any((w["multivariate"] or {}).get("drift") for w in flagged)
    assert "multivariate" in by_end[-1]["verdict"] or any(
        "multivariate" in w["verdict"] for w in flagged
    )


def _without_sections(model: Artifact) -> Artifact:
    """The same model as one trained before categorical and PCA profiles: its metadata's
    profile has neither section (the ONNX metadata rewritten, nothing else)."""
    import onnx

    proto = onnx.load_from_string(model.data)
    for prop in proto.metadata_props:
        if prop.key == "edgeloop":
            meta = json.loads(prop.value)
            meta["profile"].pop("categorical")
            meta["profile"].pop("pca")
            prop.value = json.dumps(meta)
    return Artifact(model.name, "v0", proto.SerializeToString(), model.features)


def test_a_model_whose_profile_predates_the_sections_keeps_working(
    broker, probe, agents, tmp_path: Path
) -> None:
    old = _without_sections(_model())
    probe.subscribe(f"edgeloop/{DEVICE}/status")
    probe.subscribe(f"edgeloop/{DEVICE}/telemetry")
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        extra=["--telemetry-interval", "0.5", "--drift-window", str(WINDOW)],
    ).start()
    agents.append(agent)
    publish_deployment(probe, DEVICE, 1, [(old, old.entry())])
    wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
    rng = np.random.default_rng(2)
    _send(probe, _rows(rng, WINDOW, REF), "old")
    _send(probe, _rows(rng, WINDOW, DROPPED), "old-band")
    reports, windows = _windows(probe, 2)
    for w in windows:
        assert w["multivariate"] is None
        assert [f["name"] for f in w["features"]] == ["x1", "x2", "x3", "x4"]
        assert not w["dataset_drift"]  # the band is not monitored: nothing to flag it with
    variants = reports[-1]["payload"]["variants"]
    assert all(v["drift_monitoring"] == "on" for v in variants.values())
