"""A/B routing of requests to model versions (variants), plus shadow versions.

The bucket formula, :class:`~edgeloop_agent.wire.allocation.Allocation` and the allocation
maths are the wire contract with the control node (``edgeloop_agent.wire.allocation``); this is
the per-request side: which variant serves a request. Rules are in docs/router.md.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from edgeloop_agent.wire.allocation import BUCKETS, Allocation, check_variant_name
from edgeloop_agent.wire.jsontext import json_text


class Router:
    """Routes requests to variants of one :class:`Allocation`; names the shadow versions.

    ``route`` is on the per-request path: one SHA-256 of a short string and a table lookup with
    a key, one Mersenne Twister draw without. Nothing is cached per key, so memory stays flat.
    Thread-safe: the state is read-only, and ``random.Random.random`` holds the GIL.
    """

    __slots__ = ("_prefix", "_rng", "_table", "allocation", "experiment_id", "shadows")

    def __init__(
        self,
        allocation: Allocation,
        *,
        shadows: Sequence[str] = (),
        rng_seed: int | None = None,
    ) -> None:
        if not isinstance(allocation, Allocation):
            raise TypeError(f"allocation must be an Allocation, got {type(allocation).__name__}")
        if isinstance(shadows, str):
            raise TypeError("shadows must be a sequence of version names, not a str")
        seen: set[str] = set()
        counts = allocation.counts()
        for s in shadows:
            check_variant_name(s, "shadows")
            if s in seen:
                raise ValueError(f"shadows: duplicate shadow version {json_text(s)}")
            if counts.get(s, 0) > 0:
                raise ValueError(
                    f"shadows: {json_text(s)} is also a routed variant of the allocation"
                )
            seen.add(s)
        self.allocation = allocation
        self.experiment_id = allocation.experiment_id
        self.shadows: tuple[str, ...] = tuple(shadows)
        self._table = allocation.owners()
        self._prefix = f"{allocation.experiment_id}\x00".encode("utf-8", "surrogatepass")
        self._rng = random.Random(rng_seed)

    def bucket(self, key: str) -> int:
        """The bucket of ``key``; same as :func:`bucket_of` for this experiment."""
        if not isinstance(key, str):
            raise TypeError(f"routing key must be str or None, got {type(key).__name__}")
        digest = hashlib.sha256(self._prefix + key.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def route(self, key: str | None = None) -> str:
        """The variant serving this request: by key if given, else at random by weight."""
        if key is None:
            return self._table[int(self._rng.random() * BUCKETS)]
        if not isinstance(key, str):
            raise TypeError(f"routing key must be str or None, got {type(key).__name__}")
        # bucket() inlined: this is the per-request path.
        digest = hashlib.sha256(self._prefix + key.encode("utf-8", "surrogatepass")).digest()
        return self._table[int.from_bytes(digest[:8], "big") % BUCKETS]
