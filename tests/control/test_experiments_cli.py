"""`edgeloop ab`: the real typer app in-process (a subprocess per call costs seconds of
imports on a small box), plus one run of the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop_control.infra.mosquitto import free_port
from tests.control import test_experiments as base
from tests.control.test_experiments import CHALL, CHAMP, Device, Env, retained_desired, warm_up

# The same fixtures as the manager's tests: a copied workspace, its database, a broker.
template = base.template
env = base.env

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def ab(env: Env, *args: str, broker: str | None = None) -> Result:
    from typer.testing import CliRunner

    from edgeloop_control.cli import app

    environ = {
        "EDGELOOP_WORKSPACE": str(env.ws.root),
        "EDGELOOP_BROKER": broker or env.broker.url,
        "COLUMNS": "200",
    }
    out = CliRunner().invoke(app, ["ab", *args], env=environ)
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise out.exception
    return Result(out.exit_code, out.stdout, out.stderr)


def console_script(env: Env, *args: str, broker: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "EDGELOOP_WORKSPACE": str(env.ws.root), "EDGELOOP_BROKER": broker,
               "COLUMNS": "200"}  # fmt: skip
    return subprocess.run(
        [EDGELOOP, "ab", *args], capture_output=True, text=True, env=environ, timeout=120
    )


def one_line_error(out: Result | subprocess.CompletedProcess[str], needle: str) -> None:
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and needle in lines[0], out.stderr


def test_start_status_stop(env: Env) -> None:
    out = ab(env, "start", "sensor#champion", CHALL, "-d", "d1", "-d", "d2", "--json")
    one_line_error(
        out, "has no version in stage 'champion'"
    )  # nothing promoted yet: a readable refusal

    out = ab(env, "start", CHAMP, CHALL, "-d", "d1", "-d", "d2", "--weight", "20%", "--json")
    assert out.returncode == 0, out.stderr
    exp = json.loads(out.stdout)
    assert exp["id"] == "ab-sensor-1" and exp["weights"]["challenger"] == 20.0
    doc = retained_desired(env.broker, "d2")
    assert {m["variant"]: m["weight"] for m in doc["models"]} == {CHAMP: 80.0, CHALL: 20.0}

    one_line_error(ab(env, "start", CHAMP, "load@v2", "-d", "d3"), "different models")
    one_line_error(
        ab(env, "start", CHAMP, CHALL, "-d", "d3", "--weight", "100%"), "within (0%, 100%)"
    )
    one_line_error(ab(env, "start", CHAMP, CHALL, "-d", "d2"), "d2 belongs to running experiment")
    one_line_error(ab(env, "status", "ab-nope-1"), "no experiment 'ab-nope-1'")

    # Telemetry arrives (ingested as the daemon would); status needs no broker at all.
    d1 = Device("d1")
    warm_up(env.db, exp["id"], d1)
    d1.serve(CHAMP, 240, labelled=200, correct=170)
    d1.serve(CHALL, 60, labelled=50, correct=44)
    d1.report(env.db, exp["id"])
    dead = f"mqtt://127.0.0.1:{free_port()}"
    out = ab(env, "status", exp["id"], "--json", broker=dead)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["state"] == "running"
    assert (st["variants"]["champion"]["n"], st["variants"]["challenger"]["n"]) == (200, 50)
    assert "need at least 100 labelled outcomes per arm" in st["evaluation"]["reason"]
    out = console_script(env, "status", exp["id"], broker=dead)
    assert out.returncode == 0, out.stderr
    for text in ("ab-sensor-1", "running", "always-valid p", "error_rate", "latency_p99",
                 "need at least 100 labelled outcomes"):  # fmt: skip
        assert text in out.stdout, text
    out = ab(env, "status", broker=dead)
    assert out.returncode == 0 and "ab-sensor-1" in out.stdout and "200 / 50" in out.stdout

    one_line_error(ab(env, "stop", exp["id"], broker=dead), "cannot reach the broker")
    out = ab(env, "stop", exp["id"], "--reason", "enough", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "rolled_back"
    assert [m["variant"] for m in retained_desired(env.broker, "d1")["models"]] == [CHAMP]
    one_line_error(ab(env, "stop", exp["id"]), "is rolled_back")


def test_manual_promotion_from_the_cli(env: Env) -> None:
    out = ab(env, "start", CHAMP, CHALL, "-d", "d1", "--manual", "--json")
    assert out.returncode == 0, out.stderr
    exp_id = json.loads(out.stdout)["id"]
    one_line_error(ab(env, "promote", exp_id), "has not reached a decision yet")
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    d1.serve(CHAMP, 300, labelled=300, correct=210)
    d1.serve(CHALL, 300, labelled=300, correct=270)
    d1.report(env.db, exp_id)
    env.manager().tick(time.time())  # the daemon's look
    out = ab(env, "status", exp_id, "--json")
    assert json.loads(out.stdout)["state"] == "decided"
    out = ab(env, "promote", exp_id)
    assert out.returncode == 0, out.stderr
    assert "promoted" in out.stdout and "pending: rollout" in out.stdout
    assert env.registry.stages("sensor")["champion"] == "v2"


def test_more_labels_than_requests_is_explained(env: Env) -> None:
    """Labels count in the report they arrive in, requests in the one that served them; the
    first report of a device is left out, but labels for its requests arrive later. The
    status used to show 'labelled 439' beside 'requests 436' without a word."""
    out = ab(env, "start", CHAMP, CHALL, "-d", "d1", "--manual", "--json")
    assert out.returncode == 0, out.stderr
    exp_id = json.loads(out.stdout)["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)  # 500 requests, left out of the totals
    d1.serve(CHAMP, 10, labelled=60, correct=40)  # 50 of the labels are for the warm-up's
    d1.serve(CHALL, 10, labelled=5, correct=4)
    d1.report(env.db, exp_id)
    st = json.loads(ab(env, "status", exp_id, "--json").stdout)
    champ = st["variants"]["champion"]
    assert (champ["requests"], champ["n"]) == (10, 60)
    out = ab(env, "status", exp_id)
    assert out.returncode == 0, out.stderr
    assert "labels > requests for the champion: labels count when they arrive" in " ".join(
        out.stdout.split()
    )
