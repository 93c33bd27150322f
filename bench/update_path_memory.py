"""Peak memory of the agent when offered an oversize artifact and an oversize desired document.

The issue measured 419 MB peak for a 100 MB artifact and 210 MB for a 50 MB desired
document (the unit's MemoryMax is 256M). Now the declared size is checked before the
artifact topic is subscribed, and the document's length before it is parsed; paho
still receives the document itself into memory (the broker's message_size_limit is
what bounds that).

    .venv/bin/python bench/update_path_memory.py [--artifact-mb 100] [--desired-mb 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.models import sensor_model  # noqa: E402
from tests.integration.signed import envelope  # noqa: E402
from tests.mqtt_helpers import AgentProcess, Probe  # noqa: E402

from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402
from edgeloop_control.infra.signing import generate_keypair, load_signing_key  # noqa: E402

DEVICE = "mem-1"


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact-mb", type=int, default=100)
    ap.add_argument("--desired-mb", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="upd-mem-"))
    generate_keypair(work / "k.key", work / "k.pub")
    key = load_signing_key(work / "k.key")
    broker = PrivateBroker(work / "broker").start()
    probe = Probe(broker.url)
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=work / "state",
        extra=["--trusted-key", str(work / "k.pub")],
    ).start()
    status = f"edgeloop/{DEVICE}/status"
    out: dict[str, object] = {}
    try:
        probe.subscribe(status)
        v1 = sensor_model("v1")
        probe.publish(f"edgeloop/models/{v1.name}/{v1.version}", v1.data, retain=True)
        probe.publish(
            f"edgeloop/{DEVICE}/desired", envelope(DEVICE, 1, [v1.entry()], [key]), retain=True
        )
        probe.wait_for(status, lambda s: s.get("revision") == 1, 60)
        out["serving_rss_kb"] = proc_kb(agent.pid, "VmRSS")
        out["serving_peak_kb"] = proc_kb(agent.pid, "VmHWM")

        big = b"\0" * (args.artifact_mb * 2**20)
        probe.publish("edgeloop/models/huge/v1", big, retain=True)
        entry = {**v1.entry(), "name": "huge", "size": len(big)}
        marker = time.time()
        probe.publish(
            f"edgeloop/{DEVICE}/desired", envelope(DEVICE, 2, [entry], [key]), retain=True
        )
        s = probe.wait_for(
            status, lambda s: (s.get("last_update_error") or {}).get("ts", 0) >= marker, 60
        )
        out["artifact_refusal"] = s["last_update_error"]["code"]
        out["after_artifact_peak_kb"] = proc_kb(agent.pid, "VmHWM")

        doc = b'{"pad": "' + b"x" * (args.desired_mb * 2**20) + b'"}'
        marker = time.time()
        probe.publish(f"edgeloop/{DEVICE}/desired", doc)
        try:
            s = probe.wait_for(
                status, lambda s: (s.get("last_update_error") or {}).get("ts", 0) >= marker, 20
            )
            out["desired_refusal"] = s["last_update_error"]["code"]
        except TimeoutError:
            # Over the agent's MQTT 5 Maximum Packet Size: the broker drops it.
            out["desired_refusal"] = "not delivered (over the agent's Maximum Packet Size)"
        out["after_desired_peak_kb"] = proc_kb(agent.pid, "VmHWM")
        out["final_rss_kb"] = proc_kb(agent.pid, "VmRSS")
        probe.publish(
            f"edgeloop/{DEVICE}/predict", {"id": "alive", "features": {}}, response_topic="r/x"
        )
        out["agent_alive"] = agent.alive()
        print(json.dumps(out, indent=2))
        return 0
    finally:
        agent.stop()
        probe.close()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
