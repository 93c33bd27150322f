"""The distinct-key sketch (edgeloop_agent.wire.keysketch) against plain references.

The references below are written straight from the papers, one key at a time, in plain
Python: register updates from Flajolet et al. (2007) with a 64-bit hash, the estimate from
Ertl (2017, eq. for the improved estimator, with sigma and tau as their series), and the
classic estimators (raw HyperLogLog, linear counting) in the ranges where each is accurate.
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib

import numpy as np
import pytest

from edgeloop_agent.metrics import Metrics, merge_snapshots
from edgeloop_agent.router import Router
from edgeloop_agent.wire import keysketch as ks
from edgeloop_agent.wire.allocation import BUCKETS, allocate


def ref_hash(experiment_id: str, key: str) -> int:
    digest = hashlib.sha256(f"{experiment_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[8:16], "big")


def ref_registers(hashes: list[int], p: int = 14) -> list[int]:
    m, q = 1 << p, 64 - p
    registers = [0] * m
    for h in hashes:
        index = h >> q
        rest = h & ((1 << q) - 1)
        rank = q - rest.bit_length() + 1  # leading zeros of the q-bit rest, plus one
        registers[index] = max(registers[index], rank)
    return registers


def ref_sigma(x: float) -> float:
    # sigma(x) = x + sum_{k>=1} x^(2^k) 2^(k-1)
    total, k = x, 1
    while True:
        term = x ** (2**k) * 2 ** (k - 1)
        if total + term == total:
            return total
        total += term
        k += 1


def ref_tau(x: float) -> float:
    # tau(x) = (1/3) (1 - x - sum_{k>=1} (1 - x^(2^-k))^2 2^-k)
    total, k = 1.0 - x, 1
    while True:
        term = (1.0 - x ** (2.0**-k)) ** 2 * 2.0**-k
        if total - term == total:
            return total / 3.0
        total -= term
        k += 1


def ref_ertl(registers: list[int], p: int = 14) -> float:
    m, q = 1 << p, 64 - p
    c = [registers.count(k) for k in range(q + 2)]
    if c[0] == m:
        return 0.0
    z = m * ref_sigma(c[0] / m)
    z += sum(c[k] * 2.0**-k for k in range(1, q + 1))
    z += m * ref_tau(1.0 - c[q + 1] / m) * 2.0**-q
    return m * m / (2 * math.log(2)) / z


def sketch_of(keys: list[str], experiment_id: str = "exp-1") -> ks.Registers:
    registers = ks.empty()
    ks.add_hashes(registers, ks.key_hashes(experiment_id, keys))
    return registers


@pytest.mark.parametrize("n", [10, 1_000, 100_000])
def test_estimate_within_its_stated_error(n: int) -> None:
    keys = [f"sensor-{i}" for i in range(n)]
    est = ks.estimate(sketch_of(keys))
    if n == 10:
        assert round(est) == 10  # no collision among 10 of 16,384 registers
    # 3 relative standard errors: a fixed hash, so this is a deterministic check.
    assert abs(est / n - 1) <= 3 * ks.RELATIVE_ERROR, (n, est)
    assert abs(ks.RELATIVE_ERROR - 1.04 / 128) < 1e-15


def test_registers_and_estimate_equal_the_plain_reference() -> None:
    keys = [f"user-{i}" for i in range(30_000)]
    hashes = [ref_hash("exp-1", k) for k in keys]
    assert ks.key_hashes("exp-1", keys).tolist() == hashes
    ours = sketch_of(keys)
    reference = ref_registers(hashes)
    assert ours.tolist() == reference
    assert ks.estimate(ours) == pytest.approx(ref_ertl(reference), rel=1e-12)


def test_estimate_agrees_with_the_classic_estimators_where_they_hold() -> None:
    m = ks.M
    small = sketch_of([f"k{i}" for i in range(1_000)]).tolist()
    linear_counting = m * math.log(m / small.count(0))
    assert ks.estimate(np.array(small, dtype=np.uint8)) == pytest.approx(linear_counting, 2e-3)
    large = sketch_of([f"k{i}" for i in range(200_000)]).tolist()  # n > 5m: raw HLL unbiased
    alpha = 0.7213 / (1 + 1.079 / m)
    raw = alpha * m * m / sum(2.0**-r for r in large)
    assert ks.estimate(np.array(large, dtype=np.uint8)) == pytest.approx(raw, 3e-3)


def test_merge_is_the_union() -> None:
    a = [f"k{i}" for i in range(0, 6_000)]
    b = [f"k{i}" for i in range(4_000, 9_000)]
    merged = sketch_of(a)
    ks.merge(merged, sketch_of(b))
    union = sketch_of(sorted(set(a) | set(b)))
    assert merged.tolist() == union.tolist()
    assert abs(ks.estimate(merged) / 9_000 - 1) <= 3 * ks.RELATIVE_ERROR


def test_keys_of_one_variant_hash_uniformly() -> None:
    # The sketch's hash bits are independent of the router's bucket bits: the keys the
    # router sends to a 10 % arm are estimated as well as any other set.
    router = Router(allocate(None, {"a": 1, "b": 9}, experiment_id="exp-1"))
    keys = [f"device-{i}" for i in range(50_000)]
    mine = [k for k in keys if router.route(k) == "a"]
    assert abs(len(mine) / len(keys) - 0.1) < 0.01
    assert abs(ks.estimate(sketch_of(mine)) / len(mine) - 1) <= 3 * ks.RELATIVE_ERROR
    assert BUCKETS == 10_000


def test_wire_round_trip_is_compact() -> None:
    few = sketch_of([f"s{i}" for i in range(300)])
    doc = ks.to_wire(few)
    assert sum(map(len, doc["registers"])) < 2_000
    assert ks.from_wire(doc).tolist() == few.tolist()
    many = sketch_of([f"s{i}" for i in range(100_000)])
    doc = ks.to_wire(many)
    assert all(len(c) <= 4_000 for c in doc["registers"])
    assert ks.from_wire(doc).tolist() == many.tolist()


def _wire(raw: bytes) -> dict[str, object]:
    return {"p": ks.P, "registers": [base64.b64encode(zlib.compress(raw)).decode()]}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        ([], "must be an object"),
        ({"p": 12, "registers": []}, "precision must be 14"),
        ({"p": 14, "registers": "abc"}, "list of base64"),
        ({"p": 14, "registers": ["!!!"]}, "not zlib data"),
        ({"p": 14, "registers": [base64.b64encode(b"plain").decode()]}, "not zlib data"),
        (_wire(bytes(100)), "must decode to 16384 bytes"),
        (_wire(bytes(10_000_000)), "must decode to 16384 bytes"),  # a zip bomb
        (_wire(bytes([52]) * ks.M), "exceeds 51"),
    ],
)
def test_bad_wire_forms_are_named(doc: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ks.from_wire(doc)


def test_metrics_carry_assignments_and_merge_them() -> None:
    first, second = Metrics(), Metrics()
    first.record_assigned("m@1", ks.key_hashes("e", ["a", "b", "c"]), unkeyed=2)
    second.record_assigned("m@1", ks.key_hashes("e", ["c", "d"]), unkeyed=1)
    second.record_assigned("m@2", ks.key_hashes("e", []), unkeyed=4)
    merged = merge_snapshots(first.snapshot(), second.snapshot())
    one = merged["variants"]["m@1"]["assigned"]
    assert (one["keyed"], one["unkeyed"]) == (5, 3)
    assert round(ks.estimate(ks.from_wire(one["keys"]))) == 4
    two = merged["variants"]["m@2"]["assigned"]
    assert two == {"keyed": 0, "unkeyed": 4, "keys": None}
