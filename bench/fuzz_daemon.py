"""Fuzz ``edgeloop serve`` over every topic it consumes, with a real Mosquitto.

Hypothesis generates the hostile messages (tests/control/daemon_fuzz.py: broken
fields in otherwise valid status/telemetry/samples/labels, raw junk, deep
nesting, NaN/1e999/10**400, lone surrogates, oversize payloads, invalid and
reserved device ids). Among them, every 10th message is a known-valid
telemetry report or captured sample with a unique id; at the end all of those
must be stored, exactly. Half-way the daemon is stopped (SIGTERM) and started
again on its persistent session: poison must not be redelivered.

    .venv/bin/python bench/fuzz_daemon.py [--n 10000] [--batch 50]

Prints messages tried, daemon crashes, restarts, valid messages stored versus
sent, the poison counter, and the daemon's RSS before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.control.daemon_fuzz import (
    SENTINEL,
    fleet_messages,
    report_doc,
    sample_doc,
    status_doc,
)

from edgeloop_agent.wire.network import BrokerAddress
from edgeloop_control.featurestore import FeatureStore
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.mosquitto import PrivateBroker
from edgeloop_control.infra.workspace import Workspace

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Daemon:
    def __init__(self, ws: Workspace, url: str, log: Path) -> None:
        self.ws, self.url, self.log = ws, url, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        before = self._connections()
        self.proc = subprocess.Popen(
            [EDGELOOP, "-w", str(self.ws.root), "--broker", self.url, "serve", "--tick", "5"],
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.starts += 1
        deadline = time.monotonic() + 60
        while self._connections() <= before:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon did not connect:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _connections(self) -> int:
        return self.log.read_text().count("control daemon connected") if self.log.exists() else 0

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Publisher:
    def __init__(self, url: str) -> None:
        addr = BrokerAddress.parse(url)
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="fuzzer",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.connect(addr.host, addr.port)
        self.client.loop_start()
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.pending.append(self.client.publish(topic, payload, qos=1))

    def flush(self) -> None:
        for info in self.pending:
            info.wait_for_publish(60)
        self.pending.clear()


def wait_sentinel(pub: Publisher, db: ControlDB, daemon: Daemon, timeout: float = 300) -> None:
    ts = time.time()
    pub.publish(f"edgeloop/{SENTINEL}/status", json.dumps(status_doc(SENTINEL, ts=ts)))
    pub.flush()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.device(SENTINEL)
        if row and (row.get("status") or {}).get("ts") == ts:
            return
        if not daemon.alive:
            raise RuntimeError("daemon died")
        time.sleep(0.1)
    raise RuntimeError("daemon did not catch up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="messages to send (default 10,000)")
    ap.add_argument("--batch", type=int, default=50, help="messages per hypothesis example")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-daemon-"))
    broker = PrivateBroker(tmp / "broker").start()
    ws = Workspace.init(tmp / "ws")
    with open(ws.root / "edgeloop.toml", "a") as fh:
        fh.write("\n[retrain]\nenabled = false\n")
    daemon = Daemon(Workspace.open(ws.root), broker.url, tmp / "serve.log")
    daemon.start()
    assert daemon.proc is not None
    rss_start = rss_kib(daemon.proc.pid)
    pub = Publisher(broker.url)
    db = ControlDB(ws.state_db)
    valid_reports: list[str] = []
    valid_samples: list[str] = []
    sent = 0
    crashes = 0
    started = time.monotonic()
    examples = max(1, args.n // args.batch)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(fleet_messages(), min_size=args.batch, max_size=args.batch))
    def run(batch: list[tuple[str, str, bytes]]) -> None:
        nonlocal sent, crashes
        for leaf, device, payload in batch:
            if sent % 10 == 0:
                ok: dict[str, Any]
                if (sent // 10) % 2:
                    ok = report_doc("valid-1")
                    valid_reports.append(ok["id"])
                    pub.publish("edgeloop/valid-1/telemetry", json.dumps(ok))
                else:
                    ok = sample_doc("valid-1")
                    valid_samples.append(ok["payload"]["sample_id"])
                    pub.publish("edgeloop/valid-1/samples", json.dumps(ok))
            pub.publish(f"edgeloop/{device}/{leaf}", payload)
            sent += 1
        pub.flush()
        if not daemon.alive:
            crashes += 1
            daemon.start()
        if sent >= args.n // 2 and daemon.starts == 1:
            wait_sentinel(pub, db, daemon)
            poison_before_restart = db.counters().get("poison", 0)
            code = daemon.stop()
            print(f"restart at {sent} messages: exit {code}, poison so far {poison_before_restart}")
            daemon.start()

    run()
    wait_sentinel(pub, db, daemon)
    # Captured samples are flushed every 2 s.
    store = FeatureStore(ws.feature_store_dir)
    deadline = time.monotonic() + 60
    stored_samples: set[str] = set()
    while time.monotonic() < deadline:
        try:
            frames = [store.read(v.ref) for v in store.versions("captured__m")]
            stored_samples = {s for f in frames for s in f["sample_id"].tolist()}
        except Exception:
            stored_samples = set()
        if set(valid_samples) <= stored_samples:
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    rss_end = rss_kib(daemon.proc.pid)
    rows = db.conn.execute(
        "SELECT COUNT(DISTINCT report_id) FROM variant_stats WHERE device = 'valid-1'"
    ).fetchone()[0]
    counters = db.counters()
    alive = daemon.alive
    exit_code = daemon.stop()
    log = daemon.log.read_text()
    result = {
        "messages_fuzzed": sent,
        "valid_interleaved": len(valid_reports) + len(valid_samples),
        "total_published": sent + len(valid_reports) + len(valid_samples) + 2,
        "seconds": round(elapsed, 1),
        "daemon_crashes": crashes,
        "daemon_alive_at_end": alive,
        "daemon_exit_code": exit_code,
        "restarts": daemon.starts - 1,
        "valid_reports": f"{rows} stored of {len(valid_reports)} sent",
        "valid_samples": f"{len(set(valid_samples) & stored_samples)} stored of "
        f"{len(valid_samples)} sent",
        "poison_counter": counters.get("poison", 0),
        "poison_by_leaf": {k: v for k, v in counters.items() if k.startswith("poison.")},
        "poison_events": len(db.events(kind="poison", limit=1_000_000)),
        "tracebacks_in_log": log.count("Traceback"),
        "daemon_rss_kib": {"after_start": rss_start, "at_end": rss_end},
    }
    db.close()
    pub.client.loop_stop()
    broker.stop()
    print(json.dumps(result, indent=2))
    ok = (
        crashes == 0
        and alive
        and rows == len(valid_reports)
        and set(valid_samples) <= stored_samples
        and counters.get("poison", 0) <= sent
    )
    print("OK" if ok else "FAILED", f"(workdir {tmp})")
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
