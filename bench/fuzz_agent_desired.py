"""Fuzz the agent's desired-state topic: hostile messages against a real agent and broker.

Every example (tests/integration/desired_strategies.py: random bytes, random
JSON, deep nesting, envelope-shaped garbage, valid documents with hostile
fields) is published to a real ``edgeloop-agent`` on a private Mosquitto; the
script waits for the agent's status answer to each. At the end a valid revision
is sent and must apply. Reports: examples tried, agent crashes, whether the
updater thread is alive, the refusal codes seen and the agent's RSS before and after.

    .venv/bin/python bench/fuzz_agent_desired.py [--examples 10000] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.integration.* (strategies, models, helpers)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from tests.integration.desired_strategies import hostile_message  # noqa: E402
from tests.integration.models import sensor_model  # noqa: E402
from tests.mqtt_helpers import AgentProcess, Probe  # noqa: E402

from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402

DEVICE = "fuzz-bench"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--wait", type=float, default=2.0, help="seconds to wait for each answer")
    args = ap.parse_args()

    v1 = sensor_model("v1")
    base = {"revision": 5, "models": [v1.entry()]}
    work = Path(tempfile.mkdtemp(prefix="fuzz-desired-"))
    broker = PrivateBroker(work / "broker").start()
    probe = Probe(broker.url)
    config = work / "agent.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\nbroker = "{broker.url}"\nallow_unsigned = true\n'
        'artifact_timeout_s = 1.0\nlog_level = "ERROR"\n'
    )
    agent = AgentProcess(
        broker_url=broker.url, device_id=DEVICE, state_dir=work / "state", extra=["-c", str(config)]
    ).start()
    status_topic = f"edgeloop/{DEVICE}/status"
    counts: collections.Counter[str] = collections.Counter()
    tried = crashes = 0
    started = time.monotonic()
    try:
        probe.subscribe(status_topic)
        probe.publish(f"edgeloop/models/{v1.name}/{v1.version}", v1.data, retain=True)
        probe.publish(
            f"edgeloop/{DEVICE}/desired", {"revision": 1, "models": [v1.entry()]}, retain=True
        )
        probe.wait_for(status_topic, lambda s: s.get("revision") == 1, timeout=60)
        rss_before = rss_kb(agent.pid)

        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(hostile_message(base))
        def one(payload: bytes) -> None:
            nonlocal tried, crashes
            if time.monotonic() - started > args.max_seconds:
                return
            tried += 1
            marker = time.time()
            probe.publish(f"edgeloop/{DEVICE}/desired", payload)
            try:
                s = probe.wait_for(status_topic, lambda s: s.get("ts", 0) >= marker, args.wait)
                err = s.get("last_update_error") or {}
                counts[err.get("code", "applied") if err.get("ts", 0) >= marker else "applied"] += 1
            except TimeoutError:
                counts["no answer (no-op or skipped)"] += 1
            if not agent.alive():
                crashes += 1
                raise SystemExit("agent process died")

        one()
        final = 10**12
        probe.publish(f"edgeloop/{DEVICE}/desired", {"revision": final, "models": [v1.entry()]})
        status = probe.wait_for(status_topic, lambda s: s.get("revision") == final, timeout=60)
        rss_after = rss_kb(agent.pid)
        result = {
            "examples_tried": tried,
            "seconds": round(time.monotonic() - started, 1),
            "agent_crashes": crashes,
            "agent_alive": agent.alive(),
            "updater_alive": status.get("threads") == [],
            "final_revision_applied": status.get("revision") == final,
            "rss_kb_before": rss_before,
            "rss_kb_after": rss_after,
            "outcomes": dict(counts.most_common()),
        }
        print(json.dumps(result, indent=2))
        return 0 if result["updater_alive"] and result["final_revision_applied"] else 1
    finally:
        agent.stop()
        probe.close()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
