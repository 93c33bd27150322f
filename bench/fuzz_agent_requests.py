"""Long fuzz run of a real agent's predict and feedback topics, through a real Mosquitto.

The strategies and the checking harness are the test suite's (tests/agent/hostile_payloads.py);
the test suite runs a few hundred examples, this runs tens of thousands per topic, bounded in
time. Hostile payloads (random bytes, JSON of every shape, deep nesting, UTF-16/32 and BOMs,
hostile ``reply_to`` values and MQTT 5 Response Topics) are interleaved with valid canary
requests from the same app. Printed: messages tried per topic, agent crashes, canaries and
other requests with a usable id left unanswered, replies that landed on a product topic,
agent reconnects, and the agent's RSS before and after.

    .venv/bin/python bench/fuzz_agent_requests.py                    # 10,000 per topic
    .venv/bin/python bench/fuzz_agent_requests.py --examples 20000 --time-limit 300
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from tests.agent.hostile_payloads import Harness, request_cases  # noqa: E402
from tests.integration.models import sample_features, sensor_model  # noqa: E402
from tests.integration.test_agent_e2e import publish_deployment, wait_status  # noqa: E402
from tests.mqtt_helpers import AgentProcess, Probe  # noqa: E402

from edgeloop_control.infra.mosquitto import PrivateBroker  # noqa: E402

DEVICE = "d1"


class OutOfTime(Exception):
    pass


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fuzz_topic(
    harness: Harness, kind: str, examples: int, deadline: float, canary_every: int, pace: int
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=request_cases(DEVICE, kind))
    def one(case) -> None:  # type: ignore[no-untyped-def]
        if time.monotonic() > deadline:
            raise OutOfTime
        harness.send(case, kind)
        n = harness.outcome.sent[kind]
        if n % canary_every == 0:
            harness.canary()
        if n % pace == 0:
            # Keep the broker's queue for the agent bounded: wait for the canaries.
            harness.wait_canaries(30)

    with contextlib.suppress(OutOfTime):
        one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="messages per topic")
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds per topic")
    ap.add_argument("--canary-every", type=int, default=20)
    ap.add_argument("--pace", type=int, default=500, help="wait for canaries every N messages")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgeloop-fuzz-"))
    broker = PrivateBroker(work / "broker").start()
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=DEVICE,
        state_dir=work / "state",
        extra=["--telemetry-interval", "5", "--capture-rate", "0.05", "--log-level", "ERROR"],
    ).start()
    status = 0
    try:
        probe = Probe(broker.url)
        probe.subscribe(f"edgeloop/{DEVICE}/status")
        model = sensor_model("v1")
        publish_deployment(probe, DEVICE, 1, [(model, model.entry())])
        wait_status(probe, DEVICE, lambda s: s.get("revision") == 1)
        probe.close()
        harness = Harness(broker.url, DEVICE, sample_features(1)[0])
        # Warm-up: one canary answered, then the baseline RSS.
        harness.canary()
        harness.wait_canaries(30)
        rss_before = rss_kb(agent.pid)
        started = time.monotonic()
        for kind in ("predict", "feedback"):
            t0 = time.monotonic()
            fuzz_topic(
                harness,
                kind,
                args.examples,
                t0 + args.time_limit,
                args.canary_every,
                args.pace,
            )
            print(
                f"{kind}: {harness.outcome.sent[kind]} messages in {time.monotonic() - t0:.1f} s",
                flush=True,
            )
        harness.settle(timeout=60)
        elapsed = time.monotonic() - started
        out = harness.outcome
        alive = agent.alive()
        rss_after = rss_kb(agent.pid) if alive else 0
        unanswered = harness.unanswered()
        print(f"messages tried: predict {out.sent['predict']}, feedback {out.sent['feedback']}")
        print(
            f"canaries (valid requests): {out.canaries_sent} sent, {out.canaries_answered} answered"
        )
        print(
            f"fuzz requests with a usable id: {len(out.expected)} tracked, "
            f"{len(unanswered)} unanswered {unanswered[:5]}"
        )
        print(f"agent crashes: {0 if alive else 1}; agent reconnects: {harness.reconnects()}")
        print(f"replies on forbidden topics: {len(out.forbidden)} {out.forbidden[:3]}")
        print(f"agent RSS: {rss_before / 1024:.1f} MB before, {rss_after / 1024:.1f} MB after")
        print(f"elapsed: {elapsed:.1f} s")
        harness.close()
        bad = (
            not alive
            or unanswered
            or out.forbidden
            or harness.reconnects()
            or out.canaries_answered < out.canaries_sent
        )
        status = 1 if bad else 0
        if bad:
            print(f"agent log: {agent.log_path}")
    finally:
        agent.stop()
        broker.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
