"""A/A simulations of the sequential test under continuous monitoring.

One implementation shared by the test suite (small grids, seconds) and ``bench/sim_msprt_aa.py``
(the full grid, >= 1,000 runs per cell). Outcomes are drawn vectorised with numpy; the
statistics under test run as in production: one :class:`MixtureSPRT` per experiment, one
``update`` per look.

Allocations are the router's configured weights, champion/challenger, per look:
``"50/50"``, ``"90/10"``, ``"10/90"`` or ``"50/50->90/10"`` (half the looks at 50/50, then
90/10: an operator changing the weights mid-run). Outcomes:

* binary: Bernoulli(p) per outcome (p is e.g. the accuracy of both models);
* continuous: a zero-inflated loss, 0 with probability p and Exp(1) otherwise — the shape of
  the per-request error of a classifier that is right a fraction p of the time, and the
  continuous analogue of the binary case that broke the plug-in variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .means import ContinuousStats
from .proportions import BinaryStats
from .sequential import MixtureSPRT

ALLOCATIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # (weights for the first half of the looks, weights for the second half)
    "50/50": ((0.5, 0.5), (0.5, 0.5)),
    "90/10": ((0.9, 0.1), (0.9, 0.1)),
    "10/90": ((0.1, 0.9), (0.1, 0.9)),
    "50/50->90/10": ((0.5, 0.5), (0.9, 0.1)),
}


@dataclass(frozen=True)
class AAResult:
    kind: str
    p: float
    allocation: str
    runs: int
    false_decisions: int  # runs whose always-valid p-value ever reached alpha

    @property
    def rate(self) -> float:
        return self.false_decisions / self.runs


def _split(batch: int, weights: tuple[float, float]) -> tuple[int, int]:
    a = round(batch * weights[0])
    return a, batch - a


def simulate_aa(
    kind: str,
    p: float,
    allocation: str,
    *,
    runs: int,
    looks: int = 50,
    batch: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> AAResult:
    """Run ``runs`` A/A experiments with a look after every ``batch`` outcomes."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    rng = np.random.default_rng(seed)
    tests = [MixtureSPRT(kind, alpha=alpha) for _ in range(runs)]  # type: ignore[arg-type]
    first, second = ALLOCATIONS[allocation]
    for look in range(looks):
        na, nb = _split(batch, first if look < looks // 2 else second)
        if kind == "binary":
            sa = rng.binomial(na, p, runs)
            sb = rng.binomial(nb, p, runs)
            for r, test in enumerate(tests):
                test.update(BinaryStats(na, int(sa[r])), BinaryStats(nb, int(sb[r])))
        else:
            stats = []
            for n in (na, nb):
                x = np.where(rng.random((runs, n)) < p, 0.0, rng.exponential(1.0, (runs, n)))
                stats.append((x.sum(axis=1), np.einsum("ij,ij->i", x, x)))
            (ta, qa), (tb, qb) = stats
            for r, test in enumerate(tests):
                test.update(
                    ContinuousStats(na, float(ta[r]), float(qa[r])),
                    ContinuousStats(nb, float(tb[r]), float(qb[r])),
                )
    false = sum(1 for t in tests if t.p_value <= alpha)
    return AAResult(kind, p, allocation, runs, false)
