from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pytest
from scipy.stats import chisquare

from edgeloop_agent.router import Router
from edgeloop_agent.wire.allocation import BUCKETS, Allocation, allocate, bucket_of

P_MIN = 1e-3  # a correct implementation fails one of these tests about once in 1000 runs


def _expected(alloc: Allocation, n: int, order: list[str]) -> list[float]:
    counts = alloc.counts()
    return [n * counts[v] / BUCKETS for v in order]


def test_bucket_formula_is_the_documented_one() -> None:
    for exp, key in [("exp-1", "user-42"), ("é", "ключ"), ("x", "")]:
        digest = hashlib.sha256(f"{exp}\x00{key}".encode()).digest()
        assert bucket_of(exp, key) == int.from_bytes(digest[:8], "big") % 10000
    # Golden value, from the shell: printf 'exp-1\0user-42' | sha256sum (first 16 hex digits,
    # mod 10000). Every device, restart and implementation must agree on it.
    assert bucket_of("exp-1", "user-42") == 2941
    router = Router(allocate(None, {"a": 1}, experiment_id="exp-1"))
    assert router.bucket("user-42") == 2941
    # A lone surrogate (valid in a str from JSON) still routes instead of raising.
    assert 0 <= bucket_of("exp-1", "\ud800") < BUCKETS


def test_keyed_routing_is_uniform_over_buckets_and_variants() -> None:
    n = 300_000
    keys = [f"user-{i}" for i in range(n)]
    per_bucket = Counter(bucket_of("exp-u", k) for k in keys)
    assert chisquare([per_bucket[b] for b in range(BUCKETS)]).pvalue > P_MIN

    alloc = allocate(None, {"v1": 70, "v2": 20, "v3": 10}, experiment_id="exp-u")
    router = Router(alloc)
    per_variant = Counter(router.route(k) for k in keys)
    order = ["v1", "v2", "v3"]
    result = chisquare([per_variant[v] for v in order], _expected(alloc, n, order))
    assert result.pvalue > P_MIN


def test_unkeyed_routing_follows_weights_and_is_seedable() -> None:
    alloc = allocate(None, {"v1": 90, "v2": 9.5, "v3": 0.5}, experiment_id="exp-r")
    n = 200_000
    router = Router(alloc, rng_seed=7)
    draws = [router.route(None) for _ in range(n)]
    per_variant = Counter(draws)
    order = ["v1", "v2", "v3"]
    assert chisquare([per_variant[v] for v in order], _expected(alloc, n, order)).pvalue > P_MIN
    again = Router(alloc, rng_seed=7)
    assert [again.route() for _ in range(1000)] == draws[:1000]


def test_same_key_same_variant_across_instances_and_serialisation() -> None:
    alloc = allocate(None, {"control": 50, "candidate": 50}, experiment_id="exp-s")
    first = Router(alloc, rng_seed=1)
    # A "restarted" agent rebuilds the router from the JSON desired state.
    restored = Allocation.from_dict(json.loads(json.dumps(alloc.to_dict())))
    second = Router(restored, rng_seed=2)
    keys = [f"k{i}" for i in range(5000)]
    assert [first.route(k) for k in keys] == [second.route(k) for k in keys]
    assert restored == alloc
    assert {first.route(k) for k in keys} == {"control", "candidate"}


def test_changing_experiment_id_reshuffles_keys() -> None:
    ranges = allocate(None, {"a": 50, "b": 50}, experiment_id="exp-1").ranges
    r1 = Router(Allocation("exp-1", ranges))
    r2 = Router(Allocation("exp-2", ranges))
    keys = [f"user-{i}" for i in range(40_000)]
    moved = sum(r1.route(k) != r2.route(k) for k in keys)
    # Independent assignments disagree with probability 2 * 0.5 * 0.5.
    assert 0.48 < moved / len(keys) < 0.52


def _buckets(alloc: Allocation) -> dict[str, set[int]]:
    return {v: {b for s, e in r for b in range(s, e)} for v, r in alloc.ranges.items()}


def test_weight_changes_move_exactly_the_minimum() -> None:
    rng = random.Random(3)
    names = ["a", "b", "c", "d", "e"]
    prev = allocate(None, {"a": 90, "b": 10}, experiment_id="exp-m")
    for _ in range(60):
        chosen = rng.sample(names, rng.randint(1, 4))
        weights = {v: rng.choice([0, rng.uniform(0.1, 100)]) for v in chosen}
        if sum(weights.values()) == 0:
            weights[chosen[0]] = 1.0
        new = allocate(prev, weights)
        old_b, new_b = _buckets(prev), _buckets(new)
        old_n, new_n = prev.counts(), new.counts()
        moved = sum(prev.owner(b) != new.owner(b) for b in range(BUCKETS))
        # The least any allocation can move: the sum of the decreases.
        minimum = sum(max(0, old_n[v] - new_n.get(v, 0)) for v in old_n)
        assert moved == minimum
        for v in new_b:
            if v in old_b:
                if new_n[v] <= old_n[v]:
                    assert new_b[v] <= old_b[v], f"shrinking {v} took a new bucket"
                else:
                    assert old_b[v] <= new_b[v], f"growing {v} lost a bucket"
        assert set(new.ranges) == set(weights)
        assert new == allocate(prev, dict(reversed(list(weights.items()))))  # order-free
        prev = new


def test_minimal_movement_seen_from_keys() -> None:
    before = Router(allocate(None, {"v1": 90, "v2": 10}, experiment_id="exp-k"))
    after = Router(allocate(before.allocation, {"v1": 80, "v2": 20}))
    keys = [f"device-{i}" for i in range(50_000)]
    changes = Counter(
        (before.route(k), after.route(k)) for k in keys if before.route(k) != after.route(k)
    )
    assert set(changes) == {("v1", "v2")}  # nobody moves from v2 to v1
    assert 0.09 < changes["v1", "v2"] / len(keys) < 0.11


def test_weights_are_normalised_and_rounded_exactly() -> None:
    a = allocate(None, {"a": 9, "b": 1}, experiment_id="e")
    assert a == allocate(None, {"a": 90, "b": 10}, experiment_id="e")
    assert a == allocate(None, {"a": 0.9, "b": 0.1}, experiment_id="e")  # inexact floats
    assert a.counts() == {"a": 9000, "b": 1000}
    assert a.to_dict()["ranges"] == {"a": [[0, 9000]], "b": [[9000, 10000]]}
    thirds = allocate(None, {"x": 1, "y": 1, "z": 1}, experiment_id="e").counts()
    assert thirds == {"x": 3334, "y": 3333, "z": 3333}
    off = allocate(a, {"a": 1, "b": 0})
    assert off.ranges["b"] == () and off.counts()["a"] == BUCKETS
    assert Router(off).route("anything") == "a"
    assert allocate(a, {"a": 1, "b": 1}, experiment_id="e2").experiment_id == "e2"


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "at least one variant"),
        ({"a": -1, "b": 2}, r'weights\["a"\] must not be negative'),
        ({"a": float("nan")}, r'weights\["a"\] must be a finite number'),
        ({"a": True}, r'weights\["a"\] must be a finite number'),
        ({"a": "50"}, r'weights\["a"\] must be a finite number'),
        ({"a": 0, "b": 0.0}, "must not all be zero"),
        ({"": 1}, "variant names"),
        ([("a", 1), ("a", 2)], 'duplicate variant "a"'),
    ],
)
def test_bad_weights_are_rejected(weights: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        allocate(None, weights, experiment_id="e")  # type: ignore[arg-type]


def test_allocate_needs_an_experiment_id() -> None:
    with pytest.raises(ValueError, match="experiment_id is required"):
        allocate(None, {"a": 1})


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"a": [[0, 6000]], "b": [[5000, 10000]]}, 'bucket 5000 is owned by both "a" and "b"'),
        ({"a": [[0, 6000]], "b": [[6001, 10000]]}, r"\[6000, 6001\) is unowned"),
        ({"a": [[0, 10001]]}, "not within"),
        ({"a": [[5, 5], [0, 10000]]}, "not within"),
        ({"a": [[0, 6000], [5000, 10000]]}, r'ranges\["a"\]: ranges .* overlap'),
        ({"a": [[0, "10000"]]}, "bounds must be ints"),
        ({"a": [[0, 1, 2]]}, "pair"),
        ({"a": "0-10000"}, "list of"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_ranges_are_rejected(ranges: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Allocation("e", ranges)


def test_from_dict_validates_fields() -> None:
    good = {"experiment_id": "e", "buckets": 10000, "ranges": {"a": [[0, 10000]]}}
    assert Allocation.from_dict(good).counts() == {"a": 10000}
    # Adjacent ranges are merged into the canonical form.
    split = Allocation.from_dict(
        {"experiment_id": "e", "ranges": {"a": [[5000, 10000], [0, 5000]]}}
    )
    assert split.ranges == {"a": ((0, 10000),)}
    with pytest.raises(ValueError, match="buckets must be 10000"):
        Allocation.from_dict({**good, "buckets": 100})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['weights'\]"):
        Allocation.from_dict({**good, "weights": {"a": 1}})
    with pytest.raises(ValueError, match='missing field "ranges"'):
        Allocation.from_dict({"experiment_id": "e"})
    with pytest.raises(ValueError, match="experiment_id"):
        Allocation.from_dict({**good, "experiment_id": ""})


def test_router_validates_shadows_and_keys() -> None:
    alloc = allocate(None, {"v1": 1, "v2": 1, "v3": 0}, experiment_id="e")
    assert Router(alloc, shadows=["v4", "v3"]).shadows == ("v4", "v3")
    with pytest.raises(ValueError, match='duplicate shadow version "v4"'):
        Router(alloc, shadows=["v4", "v4"])
    with pytest.raises(ValueError, match='"v1" is also a routed variant'):
        Router(alloc, shadows=["v1"])
    with pytest.raises(TypeError, match="not a str"):
        Router(alloc, shadows="v4")
    with pytest.raises(TypeError, match="routing key must be str or None, got int"):
        Router(alloc).route(42)  # type: ignore[arg-type]
    with pytest.raises(AttributeError, match="immutable"):
        alloc.experiment_id = "other"  # type: ignore[misc]
