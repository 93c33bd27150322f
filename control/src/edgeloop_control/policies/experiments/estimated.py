"""The optional A/B guardrail on the label-free performance estimate (CBPE).

Agents attach to each drift window of a calibrated classifier an estimate of its accuracy
from its own calibrated probabilities (agent ``drift/performance.py``). Both arms of an
experiment see the same inputs on the same devices, so the gap between their estimates is
the challenger's own doing, visible long before labels arrive. The guardrail fails the
challenger when its estimate trails the champion's by more than
``experiment.max_estimated_gap`` (absolute), pooled over windows where both arms reported
one (same report, same device), once each arm has ``guardrail_min_requests`` rows.

It is an estimate, not a test: it is only as good as each model's calibration, and it cannot
see a change in P(y | x) (docs/drift.md, "Performance estimation"). Off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeloop_control.infra.db import ControlDB
from edgeloop_control.stats import Guardrail

from .totals import ARMS


@dataclass(frozen=True)
class EstimatedArms:
    """Row-weighted mean estimated accuracy of each arm over paired windows."""

    champion: float
    challenger: float
    n_champion: int
    n_challenger: int
    windows: int  # paired windows (same report, same device)

    @property
    def gap(self) -> float:
        """How far the challenger trails the champion (positive: worse)."""
        return self.champion - self.challenger


def estimated_arms(
    db: ControlDB, champion: str, challenger: str, devices: list[str], since_rowid: int
) -> EstimatedArms | None:
    """Both arms' estimates from windows stored after ``since_rowid``; None when no window
    of the same report and device carries an estimate for both."""
    if not devices:
        return None
    marks = ",".join("?" * len(devices))
    rows = db.conn.execute(
        "SELECT report_id, device, variant, "
        "CASE WHEN json_valid(doc) THEN json_extract(doc, '$.estimated.value') END AS value, "
        "CASE WHEN json_valid(doc) THEN json_extract(doc, '$.estimated.n') END AS n "
        f"FROM drift_windows WHERE variant IN (?, ?) AND rowid > ? AND device IN ({marks}) "
        "ORDER BY rowid",
        (champion, challenger, since_rowid, *devices),
    ).fetchall()
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        value, n = r["value"], r["n"]
        if not _fraction(value) or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            continue
        arm = "champion" if r["variant"] == champion else "challenger"
        acc = sums.setdefault((str(r["report_id"]), str(r["device"])), {}).setdefault(
            arm, [0.0, 0.0]
        )
        acc[0] += float(value) * n
        acc[1] += n
    paired = [s for s in sums.values() if len(s) == 2]
    if not paired:
        return None
    total = {a: [sum(s[a][0] for s in paired), sum(s[a][1] for s in paired)] for a in ARMS}
    return EstimatedArms(
        champion=total["champion"][0] / total["champion"][1],
        challenger=total["challenger"][0] / total["challenger"][1],
        n_champion=int(total["champion"][1]),
        n_challenger=int(total["challenger"][1]),
        windows=len(paired),
    )


def estimated_guardrail(
    estimated: EstimatedArms | None, max_gap: float, min_rows: int
) -> Guardrail:
    """Fails when the challenger's estimated accuracy trails the champion's by > max_gap."""
    name = "estimated_performance"
    if estimated is None:
        return Guardrail(name, True, "no paired label-free estimates yet (calibrated models)")
    least = min(estimated.n_champion, estimated.n_challenger)
    if least < min_rows:
        return Guardrail(
            name, True, f"{least} rows with an estimate in the smaller arm; judged from {min_rows}"
        )
    ok = estimated.gap <= max_gap
    return Guardrail(
        name,
        ok,
        f"estimated accuracy without labels: challenger {estimated.challenger:.3f}, champion "
        f"{estimated.champion:.3f} over {estimated.windows} paired window(s); gap "
        f"{estimated.gap:+.3f} {'<=' if ok else '>'} limit {max_gap:g}",
    )


def _fraction(value: Any) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and 0.0 <= float(value) <= 1.0
