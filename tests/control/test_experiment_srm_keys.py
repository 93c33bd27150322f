"""The experiment's sample-ratio check on the unit of assignment: distinct keys when keyed.

Real parts as in test_experiments.py: the agent's own Metrics and report layout, the agent's
Router deciding each key's arm, the daemon's ingestion, a real registry, SQLite and Mosquitto.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from edgeloop_agent.router import Router
from edgeloop_agent.wire.allocation import allocate
from edgeloop_agent.wire.keysketch import key_hashes
from edgeloop_control.stats import sample_ratio_mismatch
from tests.control.test_experiments import CHALL, CHAMP, Device, Env, env, template, warm_up

# The control database's own tests: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_engines

__all__ = ["env", "template"]  # fixtures used by the tests below


def keyed_traffic(
    device: Device, exp_id: str, keys: list[str], *, busy: int = 0, lose: float = 0.0
) -> dict[str, list[str]]:
    """Route ``keys`` with the agent's router at 50/50 and record what the agent would.

    ``busy``: the champion's first key sends this many extra requests (a busy pump).
    ``lose``: this share of the challenger's keys never reaches it (an app bug).
    """
    router = Router(allocate(None, {CHAMP: 1, CHALL: 1}, experiment_id=exp_id))
    arms: dict[str, list[str]] = {CHAMP: [], CHALL: []}
    for k in keys:
        arms[router.route(k)].append(k)
    arms[CHALL] = arms[CHALL][: round(len(arms[CHALL]) * (1 - lose))]
    for variant, mine in arms.items():
        requests = list(mine)
        if variant == CHAMP and busy:
            requests += [mine[0]] * busy
        device.serve(variant, len(requests))
        device.metrics.record_assigned(variant, key_hashes(exp_id, requests), unkeyed=0)
    return arms


def test_busy_keys_are_not_a_mismatch_on_keys(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    d1, d2 = Device("d1"), Device("d2")
    warm_up(env.db, exp_id, d1, d2)
    keys = [f"pump-{i}" for i in range(3_000)]
    # Each device sees every key (the same pumps report to both): the merge is a union.
    arms = keyed_traffic(d1, exp_id, keys, busy=2_000)
    keyed_traffic(d2, exp_id, keys)
    for d in (d1, d2):
        d.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    srm = st["srm"]
    assert srm["unit"] == "keys" and srm["checked"] and not srm["flag"], srm
    assert st["state"] == "running"
    for arm, variant in (("champion", CHAMP), ("challenger", CHALL)):
        observed = srm["observed"][srm["variants"].index(arm)]
        assert abs(observed / len(arms[variant]) - 1) < 0.03, (arm, observed)
    # The request counts of the same traffic would have cried wolf.
    requests = [st["variants"][a]["requests"] for a in ("champion", "challenger")]
    assert sample_ratio_mismatch(requests, [1, 1]).mismatch


def test_keys_missing_from_one_arm_roll_back(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    keyed_traffic(d1, exp_id, [f"user-{i}" for i in range(4_000)], lose=0.25)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["srm"]["flag"] and st["srm"]["unit"] == "keys"
    assert st["state"] == "rolled_back"
    assert "sample ratio mismatch on keys" in st["decision"]["reason"]


def test_unkeyed_traffic_is_tested_on_requests(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    for variant, n in ((CHAMP, 1_000), (CHALL, 980)):
        d1.serve(variant, n)
        d1.metrics.record_assigned(variant, key_hashes(exp_id, []), unkeyed=n)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    assert st["srm"]["unit"] == "requests" and st["srm"]["observed"] == [1_000, 980]


def test_mixed_traffic_tests_both_units_at_half_the_threshold(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1"])["id"]
    d1 = Device("d1")
    warm_up(env.db, exp_id, d1)
    keyed_traffic(d1, exp_id, [f"user-{i}" for i in range(2_000)])
    # Unkeyed requests 1,000 vs 855: chi-square p = 0.00075, a mismatch at 0.001 alone, but
    # with keys tested too each unit gets 0.001 / 2 (Bonferroni).
    for variant, n in ((CHAMP, 1_000), (CHALL, 855)):
        d1.serve(variant, n)
        d1.metrics.record_assigned(variant, key_hashes(exp_id, []), unkeyed=n)
    d1.report(env.db, exp_id)
    m.tick(time.time())
    [st] = m.status(exp_id)
    srm = st["srm"]
    p = sample_ratio_mismatch([1_000, 855], [1, 1]).p_value
    assert 0.0005 < p < 0.001
    # The smaller p-value of the two units is shown: the unkeyed requests'.
    assert srm["unit"] == "unkeyed requests" and srm["threshold"] == 0.0005
    assert srm["observed"] == [1_000, 855] and srm["p_value"] == pytest.approx(p)
    assert not srm["flag"] and st["state"] == "running"


def test_a_lost_sketch_falls_back_to_requests_instead_of_a_false_mismatch(env: Env) -> None:
    m = env.manager()
    exp_id = m.start("sensor", "v1", "v2", ["d1", "d2"])["id"]
    d1, d2 = Device("d1"), Device("d2")
    warm_up(env.db, exp_id, d1, d2)
    keyed_traffic(d1, exp_id, [f"pump-{i}" for i in range(1_500)])
    keyed_traffic(d2, exp_id, [f"pump-{i}" for i in range(1_500, 3_000)])
    snapshot = d2.metrics.snapshot

    def corrupted(*, reset: bool = False) -> dict[str, Any]:
        snap = snapshot(reset=reset)
        snap["variants"][CHALL]["assigned"]["keys"] = {"p": 14, "registers": ["!!!"]}
        return snap

    d2.metrics.snapshot = corrupted  # type: ignore[method-assign]
    for d in (d1, d2):
        assert d.report(env.db, exp_id)  # the report is stored all the same
    row = env.db.conn.execute(
        "SELECT keyed, sketch FROM variant_keys WHERE variant = ? AND report_id LIKE 'd2:%' "
        "ORDER BY rowid DESC LIMIT 1",
        (CHALL,),
    ).fetchone()
    assert row["keyed"] > 700 and row["sketch"] is None
    m.tick(time.time())
    [st] = m.status(exp_id)
    # Half the challenger's keys unseen would read as a mismatch on keys; its requests are
    # all there, so the check falls back to them.
    assert st["srm"]["unit"] == "requests" and not st["srm"]["flag"], st["srm"]
    assert st["state"] == "running"


def test_malformed_assignments_keep_the_report(env: Env) -> None:
    d1 = Device("d1")
    d1.serve(CHAMP, 10)
    snapshot = d1.metrics.snapshot

    def malformed(*, reset: bool = False) -> dict[str, Any]:
        snap = snapshot(reset=reset)
        snap["variants"][CHAMP]["assigned"] = {"keyed": -3, "unkeyed": "x", "keys": 5}
        return snap

    d1.metrics.snapshot = malformed  # type: ignore[method-assign]
    assert d1.report(env.db, None)
    stats = env.db.conn.execute("SELECT requests FROM variant_stats").fetchall()
    assert [r["requests"] for r in stats] == [10]  # the counters are kept
    assert env.db.conn.execute("SELECT COUNT(*) FROM variant_keys").fetchone()[0] == 0
