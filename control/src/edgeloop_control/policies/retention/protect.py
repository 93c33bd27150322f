"""Devices whose raw rows a live policy may still read, so retention leaves them raw.

An experiment folds its arms' telemetry and judges drift guardrails from raw rows (by
rowid since it started), a rollout's gates read raw reports of its devices, and an open
retraining episode names the devices its evidence came from. While any of these holds a
device, none of its rows is aggregated or deleted, however old; they are once it ends.
"""

from __future__ import annotations

import json

from edgeloop_control.infra import sql
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.policies.experiments.store import FINAL as EXPERIMENT_FINAL
from edgeloop_control.policies.retrain.store import IDLE
from edgeloop_control.policies.rollout.store import ACTIVE as ROLLOUT_ACTIVE


def protected_devices(db: ControlDB) -> set[str]:
    """Every device owned by an experiment or rollout (``device_owners``), in an experiment
    that has not reached a final state, in an active rollout, or in the scope of an open
    retraining episode. A table that does not exist yet holds nobody."""
    out: set[str] = set()
    out |= _column(db, "SELECT device FROM device_owners")
    marks = ", ".join("?" * len(EXPERIMENT_FINAL))
    out |= _lists(
        db, f"SELECT devices FROM experiments WHERE state NOT IN ({marks})", EXPERIMENT_FINAL
    )
    marks = ", ".join("?" * len(ROLLOUT_ACTIVE))
    out |= _column(
        db,
        "SELECT d.device FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id "
        f"WHERE r.state IN ({marks})",
        ROLLOUT_ACTIVE,
    )
    out |= _lists(db, "SELECT devices FROM retrain_state WHERE state != ?", (IDLE,))
    return out


def _column(db: ControlDB, query: str, args: tuple[str, ...] = ()) -> set[str]:
    try:
        return {str(r[0]) for r in db.conn.execute(query, args)}
    except sql.OperationalError:  # no such table: that policy never ran here
        return set()


def _lists(db: ControlDB, query: str, args: tuple[str, ...]) -> set[str]:
    """Devices from JSON-list columns. A corrupt list protects nothing rather than failing
    retention: the policy that owns the row reports it (infra/jsoncolumn) on its own tick."""
    out: set[str] = set()
    for raw in _column(db, query, args):
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, list):
            out |= {str(d) for d in value}
    return out
