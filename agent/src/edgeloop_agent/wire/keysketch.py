"""Distinct routing keys per variant: a HyperLogLog sketch, its wire form and its estimate.

When requests carry a routing key, the key (a user, a sensor) is the unit of assignment, so
the sample-ratio check must count distinct keys per variant, not requests. An agent keeps one
sketch per variant per telemetry interval (a fixed array of ``M`` one-byte registers), sends
it with the interval's metrics, and the control node merges the sketches of every device and
interval of an experiment by a register-wise maximum: the merge of two sketches is exactly the
sketch of the union of their keys.

* Precision ``P = 14``: ``M = 16384`` registers (16 KiB per variant), relative standard error
  ``1.04 / sqrt(M) = 0.81 %`` (Flajolet et al. 2007). Measured in ``bench/sim_srm_keys.py``.
* Hash: the router's own, SHA-256 of ``f"{experiment_id}\\x00{key}"``; the router takes its
  bucket from bytes 0-7 of the digest, the sketch takes bytes 8-15 (big-endian uint64), which
  are independent of the bucket, so the keys of one variant hash uniformly. The experiment id
  salts the hash: sketches merge as unions within one router experiment, which is the span
  the control node merges.
* Estimate: Ertl's "improved" estimator (O. Ertl, "New cardinality estimation algorithms for
  HyperLogLog sketches", 2017, algorithm 6), unbiased over the whole range without the
  empirical bias tables of HLL++ or a switch to linear counting.
* Wire form: ``{"p": 14, "registers": [base64, ...]}``, the zlib-compressed registers in
  base64 chunks of at most 4,000 characters (a telemetry string may not exceed 4,096).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeloop_agent.wire.jsontext import json_text

P = 14
M = 1 << P
Q = 64 - P  # hash bits left for the rank
MAX_RANK = Q + 1
RELATIVE_ERROR = 1.04 / math.sqrt(M)
_CHUNK = 3000  # bytes per base64 chunk: 4,000 characters
_ALPHA_INF = 1.0 / (2.0 * math.log(2.0))

Registers = npt.NDArray[np.uint8]
Hashes = npt.NDArray[np.uint64]


def key_hashes(experiment_id: str, keys: Iterable[str]) -> Hashes:
    """The sketch's 64-bit hash of each key: bytes 8-15 of the router's SHA-256 digest."""
    prefix = f"{experiment_id}\x00".encode("utf-8", "surrogatepass")
    raw = b"".join(
        hashlib.sha256(prefix + k.encode("utf-8", "surrogatepass")).digest()[8:16] for k in keys
    )
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def empty() -> Registers:
    return np.zeros(M, dtype=np.uint8)


def add_hashes(registers: Registers, hashes: Hashes) -> None:
    """Fold 64-bit hashes into ``registers`` in place, vectorised.

    The top ``P`` bits choose the register; the rank is 1 + the number of leading zeros of
    the remaining ``Q`` bits (``Q + 1`` when they are all zero). ``Q = 50`` bits convert to
    float64 exactly, so ``frexp`` gives their bit length.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    if h.size == 0:
        return
    index = (h >> np.uint64(Q)).astype(np.intp)
    rest = (h & np.uint64((1 << Q) - 1)).astype(np.float64)
    _, bit_length = np.frexp(rest)  # 0 for rest == 0
    rank = (Q + 1 - bit_length).astype(np.uint8)
    np.maximum.at(registers, index, rank)


def merge(into: Registers, other: Registers) -> None:
    """``into`` becomes the sketch of the union of both key sets."""
    np.maximum(into, other, out=into)


def estimate(registers: Registers) -> float:
    """Distinct keys folded into ``registers`` (Ertl 2017, the improved raw estimator)."""
    counts = np.bincount(np.asarray(registers, dtype=np.intp), minlength=MAX_RANK + 1)
    if counts.size > MAX_RANK + 1:
        raise ValueError(f"register values above {MAX_RANK}")
    c = [int(x) for x in counts]
    if c[0] == M:
        return 0.0
    z = M * _tau(1.0 - c[MAX_RANK] / M)
    for k in range(Q, 0, -1):
        z = 0.5 * (z + c[k])
    z += M * _sigma(c[0] / M)
    return _ALPHA_INF * M * M / z


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x == 0.0 or x == 1.0:
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0


def to_wire(registers: Registers) -> dict[str, Any]:
    """The JSON form sent in telemetry (a few hundred bytes for a few hundred keys)."""
    packed = zlib.compress(np.asarray(registers, dtype=np.uint8).tobytes(), 6)
    chunks = [
        base64.b64encode(packed[i : i + _CHUNK]).decode("ascii")
        for i in range(0, len(packed), _CHUNK)
    ]
    return {"p": P, "registers": chunks}


def from_wire(doc: Any) -> Registers:
    """Registers from :func:`to_wire`'s form; ``ValueError`` naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"key sketch must be an object, got {type(doc).__name__}")
    if doc.get("p") != P or isinstance(doc.get("p"), bool):
        raise ValueError(f"key sketch: precision must be {P}, got {json_text(doc.get('p'))}")
    chunks = doc.get("registers")
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise ValueError("key sketch: registers must be a list of base64 strings")
    try:
        packed = b"".join(base64.b64decode(c, validate=True) for c in chunks)
        # Decompress at most M + 1 bytes: a hostile stream cannot blow up memory.
        d = zlib.decompressobj()
        raw = d.decompress(packed, M + 1)
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"key sketch: registers are not zlib data in base64 ({exc})") from exc
    if len(raw) != M or d.unconsumed_tail or not d.eof:
        raise ValueError(f"key sketch: registers must decode to {M} bytes")
    registers: Registers = np.frombuffer(raw, dtype=np.uint8).copy()
    if int(registers.max()) > MAX_RANK:
        raise ValueError(f"key sketch: a register exceeds {MAX_RANK}")
    return registers
