"""The agent's memory and time while it fetches an agent package (the self-update).

Two fresh agents in the same run, each serving a small model from a private
Mosquitto: one fetches a 48 MiB agent package in 4 MiB retained chunks (written
to disk chunk by chunk, then hashed from the file); the baseline receives one
16 MiB artifact as a single message (the model update path holds it whole).
Reported: each agent's peak resident set (VmHWM) above its serving peak, the
ratio between them, and the package's fetch-verify-request time.

    .venv/bin/python bench/bench_selfupdate.py [--package-mb 48] [--artifact-mb 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.models import sensor_model  # noqa: E402
from tests.integration.signed import envelope  # noqa: E402
from tests.mqtt_helpers import AgentProcess, Probe  # noqa: E402

from edgeloop_agent.selfupdate import dpkg_architecture  # noqa: E402
from edgeloop_agent.wire.agentpackage import chunk_topic, split_chunks  # noqa: E402
from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.infra.signing import generate_keypair, load_signing_key  # noqa: E402

CHUNK = 4 * 1024 * 1024


def hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def serving_agent(broker: PrivateBroker, work: Path, device: str, key: Any) -> tuple:
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=device,
        state_dir=work / f"state-{device}",
        extra=["--trusted-key", str(work / "k.pub")],
        env={"EDGELOOP_AGENT_PACKAGE_VERSION": "1.0.0"},
    ).start()
    probe = Probe(broker.url)
    status = f"edgeloop/{device}/status"
    probe.subscribe(status)
    v1 = sensor_model("v1")
    probe.publish(f"edgeloop/models/{v1.name}/{v1.version}", v1.data, retain=True)
    probe.publish(
        f"edgeloop/{device}/desired", envelope(device, 1, [v1.entry()], [key]), retain=True
    )
    probe.wait_for(status, lambda s: s.get("revision") == 1, 60)
    time.sleep(1.0)
    return agent, probe, status, v1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package-mb", type=int, default=48)
    ap.add_argument("--artifact-mb", type=int, default=16)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="selfupdate-bench-"))
    generate_keypair(work / "k.key", work / "k.pub")
    key = load_signing_key(work / "k.key")
    broker = PrivateBroker(work / "broker").start()
    out: dict[str, Any] = {"package_mb": args.package_mb, "artifact_mb": args.artifact_mb}
    try:
        # The package, in chunks.
        agent, probe, status, v1 = serving_agent(broker, work, "pkg-1", key)
        try:
            base = hwm_kb(agent.pid)
            data = os.urandom(args.package_mb * 2**20)
            sha = hashlib.sha256(data).hexdigest()
            for i, chunk in enumerate(split_chunks(data, CHUNK)):
                probe.publish(chunk_topic("edgeloop", sha, i), chunk, retain=True)
            pkg = {
                "version": "1.1.0",
                "architecture": dpkg_architecture(),
                "sha256": sha,
                "size": len(data),
                "chunk_size": CHUNK,
            }
            started = time.monotonic()
            probe.publish(
                "edgeloop/pkg-1/desired",
                envelope("pkg-1", 2, [v1.entry()], [key], agent=pkg),
                retain=True,
            )
            probe.wait_for(
                status, lambda s: (s.get("agent_update") or {}).get("state") == "requested", 120
            )
            out["package_fetch_s"] = round(time.monotonic() - started, 2)
            out["package_serving_peak_mb"] = round(base / 1024, 1)
            out["package_peak_growth_mb"] = round((hwm_kb(agent.pid) - base) / 1024, 1)
        finally:
            agent.stop()
            probe.close()
        # The baseline: one artifact, one message.
        agent, probe, status, v1 = serving_agent(broker, work, "art-1", key)
        try:
            base = hwm_kb(agent.pid)
            blob = os.urandom(args.artifact_mb * 2**20)
            probe.publish("edgeloop/models/blob/v1", blob, retain=True)
            entry = {
                **v1.entry(),
                "name": "blob",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "size": len(blob),
            }
            marker = time.time()
            probe.publish(
                "edgeloop/art-1/desired", envelope("art-1", 2, [entry], [key]), retain=True
            )
            # Received whole and hashed, then refused by onnxruntime: the peak is the receipt.
            probe.wait_for(
                status, lambda s: (s.get("last_update_error") or {}).get("ts", 0) >= marker, 120
            )
            out["artifact_serving_peak_mb"] = round(base / 1024, 1)
            out["artifact_peak_growth_mb"] = round((hwm_kb(agent.pid) - base) / 1024, 1)
        finally:
            agent.stop()
            probe.close()
        a, p = out["artifact_peak_growth_mb"], out["package_peak_growth_mb"]
        out["growth_per_mb_package"] = round(p / args.package_mb, 3)
        out["growth_per_mb_artifact"] = round(a / args.artifact_mb, 3)
        out["ratio_package_vs_artifact_per_mb"] = round(
            out["growth_per_mb_package"] / max(out["growth_per_mb_artifact"], 1e-9), 3
        )
        print(json.dumps(out, indent=2))
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
