"""The retraining policy's failures, as warning lines under `edgeloop fleet` and `ab status`.

A retraining that keeps failing backs off quietly in the daemon (one `retrain_failed`
event per distinct reason); an operator looking at the fleet or the experiments must
still see that the loop is stuck, and why, without reading the event log.
"""

from __future__ import annotations

import time

from edgeloop_control.infra.db import ControlDB


def failing_lines(db: ControlDB, now: float | None = None) -> list[str]:
    """One line per model whose retraining is failing: attempts, next try, last reason."""
    from edgeloop_control.policies.retrain.store import RetrainStore

    now = time.time() if now is None else now
    lines = []
    for st in RetrainStore(db).failing():
        wait = "" if st.retry_at is None else f", next try in {_span(st.retry_at - now)}"
        lines.append(
            f"retraining {st.model} is failing ({st.failures} attempt"
            f"{'s' if st.failures != 1 else ''}{wait}): {st.last_error or 'no reason recorded'}"
        )
    return lines


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
