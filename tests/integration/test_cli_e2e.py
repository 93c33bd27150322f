"""The first real path, through the real CLI: init -> ingest -> train -> deploy -> predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgeloop_control.demo.sensors import FEATURES, generate
from tests.integration.test_agent_e2e import wait_status
from tests.mqtt_helpers import AgentProcess

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


def test_ingest_train_deploy_predict_through_the_cli(broker, probe, agents, tmp_path: Path):
    ws = tmp_path / "ws"
    env = {**os.environ, "EDGELOOP_BROKER": broker.url, "COLUMNS": "160"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [EDGELOOP, "-w", str(ws), *args], capture_output=True, text=True, env=env, timeout=180
        )
        if check:
            assert out.returncode == 0, f"{args}: {out.stderr}"
        return out

    run("init", str(ws))
    csv = tmp_path / "pumps.csv"
    generate(3000, seed=3).to_csv(csv, index=False)
    ingested = json.loads(
        run("ingest", str(csv), "--view", "pumps", "--entity", "pump_id", "--timestamp", "ts",
            "--json").stdout
    )  # fmt: skip
    assert ingested["accepted"] == 3000

    trained = json.loads(
        run("train", "--view", "pumps", "--target", "fault", "--name", "sensor", "--json").stdout
    )
    assert trained["model"] == "sensor@v1" and trained["stage"] == "champion"
    assert trained["parity"]["passed"] is True and trained["parity"]["label_mismatches"] == 0
    assert 0.7 < trained["metrics"]["accuracy"] <= 1.0
    listed = json.loads(run("models", "ls", "--json").stdout)
    assert [m["ref"] for m in listed] == ["sensor@v1"]

    # A bad request to the CLI: one clear line, non-zero exit.
    bad = run("train", "--view", "nope", "--target", "fault", check=False)
    assert bad.returncode != 0 and "nope" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    probe.subscribe("edgeloop/cli-1/status")
    probe.subscribe("replies/cli")
    agents.append(
        AgentProcess(
            broker_url=broker.url,
            device_id="cli-1",
            state_dir=tmp_path / "state",
            extra=["--trusted-key", str(ws / "keys" / "signing.pub")],
        ).start()
    )
    assert "registered cli-1" in run("fleet", "add", "cli-1").stdout
    deployed = json.loads(run("deploy", "sensor@v1", "--device", "cli-1", "--json").stdout)
    assert deployed[0]["revision"] == 1
    wait_status(probe, "cli-1", lambda s: s.get("revision") == 1)
    fleet = json.loads(run("fleet", "--json").stdout)
    assert fleet[0]["device"] == "cli-1" and fleet[0]["in_sync"] and fleet[0]["online"]

    row = generate(1, seed=9).iloc[0]
    probe.publish(
        "edgeloop/cli-1/predict",
        {"id": "cli-req", "features": {f: float(row[f]) for f in FEATURES}},
        response_topic="replies/cli",
    )
    reply = probe.next_json(10, topic="replies/cli")
    assert reply["id"] == "cli-req" and reply["model"] == "sensor" and reply["version"] == "v1"
    assert reply["prediction"] in (0, 1)
