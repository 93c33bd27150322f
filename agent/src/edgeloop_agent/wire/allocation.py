"""How A/B traffic is split: bucket ranges per variant, and the maths that moves them.

The control node computes an :class:`Allocation` with :func:`allocate` and ships it in the
desired state; the agent's request router (``edgeloop_agent.router``) serves from it. A request
with a key lands in one of ``BUCKETS`` buckets, a deterministic and uniform function of
(experiment id, key); each variant owns a set of bucket ranges (an :class:`Allocation`). Requests
without a key are routed at random in proportion to the same ranges. :func:`allocate` turns
weights into ranges moving as few buckets as possible from a previous allocation. The formula,
wire format and rules are in docs/router.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from edgeloop_agent.wire.jsontext import json_text

BUCKETS = 10_000

Ranges = tuple[tuple[int, int], ...]


def bucket_of(experiment_id: str, key: str) -> int:
    """The bucket of ``key`` in ``experiment_id``: the formula the control node relies on.

    ``int.from_bytes(sha256(f"{experiment_id}\\x00{key}".encode()).digest()[:8], "big") % BUCKETS``.
    Lone surrogates (possible in str decoded from JSON) are encoded with "surrogatepass" instead
    of raising; every other string gets plain UTF-8, so the formula is unchanged for them.
    """
    if not isinstance(key, str):
        raise TypeError(f"routing key must be str or None, got {type(key).__name__}")
    data = f"{experiment_id}\x00{key}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % BUCKETS


class Allocation:
    """Which buckets each variant owns, for one experiment. Immutable and validated.

    ``ranges`` maps variant -> sorted, merged, half-open ``(start, end)`` bucket ranges. Together
    they must cover ``0 .. BUCKETS-1`` exactly once. A variant may own nothing (weight 0).
    """

    __slots__ = ("_table", "experiment_id", "ranges")

    experiment_id: str
    ranges: Mapping[str, Ranges]
    _table: tuple[str, ...]

    def __init__(self, experiment_id: str, ranges: Mapping[str, Iterable[Sequence[int]]]) -> None:
        if not isinstance(experiment_id, str) or not experiment_id:
            raise ValueError(
                f"experiment_id must be a non-empty str, got {json_text(experiment_id)}"
            )
        if not isinstance(ranges, Mapping) or not ranges:
            raise ValueError(
                "ranges must be a non-empty mapping of variant -> list of [start, end)"
            )
        owner: list[str | None] = [None] * BUCKETS
        clean: dict[str, Ranges] = {}
        for variant in sorted(ranges):
            check_variant_name(variant, "ranges")
            merged = _normalise_ranges(variant, ranges[variant])
            for start, end in merged:
                for b in range(start, end):
                    other = owner[b]
                    if other is not None:
                        raise ValueError(
                            f"ranges overlap: bucket {b} is owned by both {json_text(other)} "
                            f"and {json_text(variant)}"
                        )
                    owner[b] = variant
            clean[variant] = merged
        if None in owner:
            gap_start = owner.index(None)
            gap_end = gap_start
            while gap_end < BUCKETS and owner[gap_end] is None:
                gap_end += 1
            raise ValueError(
                f"ranges do not cover buckets 0..{BUCKETS - 1}: [{gap_start}, {gap_end}) is unowned"
            )
        object.__setattr__(self, "experiment_id", experiment_id)
        object.__setattr__(self, "ranges", clean)
        object.__setattr__(self, "_table", tuple(owner))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Allocation is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allocation):
            return NotImplemented
        return self.experiment_id == other.experiment_id and self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash((self.experiment_id, tuple(sorted(self.ranges.items()))))

    def __repr__(self) -> str:
        return f"Allocation({json_text(self.experiment_id)}, {json_text(dict(self.ranges))})"

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(self.ranges)

    def counts(self) -> dict[str, int]:
        """Buckets owned by each variant."""
        return {v: sum(e - s for s, e in r) for v, r in self.ranges.items()}

    def weights(self) -> dict[str, float]:
        """Share of traffic per variant, in percent (resolution 100 / BUCKETS)."""
        return {v: n * 100 / BUCKETS for v, n in self.counts().items()}

    def owner(self, bucket: int) -> str:
        """The variant owning ``bucket``."""
        return self._table[bucket]

    def owners(self) -> tuple[str, ...]:
        """Bucket -> variant table (``BUCKETS`` entries, shared strings)."""
        return self._table

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"experiment_id", "buckets", "ranges": {variant: [[s, e], ...]}}``."""
        return {
            "experiment_id": self.experiment_id,
            "buckets": BUCKETS,
            "ranges": {v: [[s, e] for s, e in r] for v, r in self.ranges.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Allocation:
        if not isinstance(data, Mapping):
            raise ValueError(f"allocation must be an object, got {type(data).__name__}")
        unknown = set(data) - {"experiment_id", "buckets", "ranges"}
        if unknown:
            raise ValueError(f"allocation: unknown field(s) {sorted(unknown)}")
        for field in ("experiment_id", "ranges"):
            if field not in data:
                raise ValueError(f"allocation: missing field {json_text(field)}")
        buckets = data.get("buckets", BUCKETS)
        if buckets != BUCKETS or isinstance(buckets, bool):
            raise ValueError(f"allocation: buckets must be {BUCKETS}, got {json_text(buckets)}")
        return cls(data["experiment_id"], data["ranges"])


def allocate(
    previous: Allocation | None,
    weights: Mapping[str, float] | Iterable[tuple[str, float]],
    *,
    experiment_id: str | None = None,
) -> Allocation:
    """Bucket ranges for ``weights``, moving as few buckets as possible from ``previous``.

    Weights are relative (normalised to their sum; 90/10 and 9/1 are the same) and rounded to
    whole buckets by largest remainder, ties to the smaller variant name. A variant that shrinks
    keeps its lowest buckets, a variant that grows keeps all of its buckets, variants absent from
    ``weights`` free all of theirs, and the freed buckets go, lowest first, to the growing
    variants in name order. So the buckets that move are exactly the sum of the positive weight
    decreases (the least possible), and the result depends only on (previous, weights).
    ``experiment_id`` defaults to the previous one and is required without ``previous``.
    """
    if previous is not None and not isinstance(previous, Allocation):
        raise TypeError(f"previous must be an Allocation or None, got {type(previous).__name__}")
    exp = experiment_id if experiment_id is not None else getattr(previous, "experiment_id", None)
    if exp is None:
        raise ValueError("experiment_id is required when there is no previous allocation")
    targets = _bucket_targets(_check_weights(weights))

    owner: list[str | None] = [None] * BUCKETS
    if previous is not None:
        owner = list(previous.owners())
    owned: dict[str, list[int]] = {v: [] for v in targets}
    for b, v in enumerate(owner):
        if v in owned and len(owned[v]) < targets[v]:
            owned[v].append(b)
        else:
            owner[b] = None  # removed variant, or beyond a shrinking variant's target
    free = iter([b for b, v in enumerate(owner) if v is None])
    for v in sorted(targets):
        for _ in range(targets[v] - len(owned[v])):
            owner[next(free)] = v
    ranges: dict[str, list[tuple[int, int]]] = {v: [] for v in targets}
    for b, v in enumerate(owner):
        r = ranges[v]  # type: ignore[index]
        if r and r[-1][1] == b:
            r[-1] = (r[-1][0], b + 1)
        else:
            r.append((b, b + 1))
    return Allocation(exp, ranges)


def check_variant_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(
            f"{where}: variant names must be non-empty str without padding, got {json_text(name)}"
        )


def _normalise_ranges(variant: str, raw: Any) -> Ranges:
    where = f"ranges[{json_text(variant)}]"
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise ValueError(f"{where} must be a list of [start, end) pairs, got {json_text(raw)}")
    pairs: list[tuple[int, int]] = []
    for item in raw:
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
            raise ValueError(
                f"{where}: each range must be a [start, end) pair, got {json_text(item)}"
            )
        start, end = item
        for x in (start, end):
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"{where}: range bounds must be ints, got {json_text(item)}")
        if not 0 <= start < end <= BUCKETS:
            raise ValueError(
                f"{where}: range {list(item)} not within 0 <= start < end <= {BUCKETS}"
            )
        pairs.append((start, end))
    pairs.sort()
    merged: list[tuple[int, int]] = []
    for start, end in pairs:
        if merged and start < merged[-1][1]:
            raise ValueError(f"{where}: ranges {list(merged[-1])} and {[start, end]} overlap")
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def _check_weights(weights: Any) -> dict[str, Fraction]:
    if isinstance(weights, Mapping):
        items = list(weights.items())
    elif isinstance(weights, Iterable) and not isinstance(weights, (str, bytes)):
        items = list(weights)
    else:
        raise TypeError(
            f"weights must be a mapping variant -> weight, got {type(weights).__name__}"
        )
    if not items:
        raise ValueError("weights must name at least one variant")
    out: dict[str, Fraction] = {}
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise ValueError(f"weights: expected (variant, weight) pairs, got {json_text(item)}")
        name, w = item
        check_variant_name(name, "weights")
        if name in out:
            raise ValueError(f"weights: duplicate variant {json_text(name)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(
                f"weights[{json_text(name)}] must be a finite number, got {json_text(w)}"
            )
        if w < 0:
            raise ValueError(f"weights[{json_text(name)}] must not be negative, got {json_text(w)}")
        out[name] = Fraction(w)
    if sum(out.values()) == 0:
        raise ValueError(f"weights must not all be zero: {json_text(dict(items))}")
    return out


def _bucket_targets(weights: dict[str, Fraction]) -> dict[str, int]:
    """Largest-remainder rounding of weights to whole buckets summing to BUCKETS (exact)."""
    total = sum(weights.values())
    exact = {v: w * BUCKETS / total for v, w in weights.items()}
    targets = {v: math.floor(x) for v, x in exact.items()}
    spare = BUCKETS - sum(targets.values())
    by_remainder = sorted(weights, key=lambda v: (-(exact[v] - targets[v]), v))
    for v in by_remainder[:spare]:
        targets[v] += 1
    return targets
