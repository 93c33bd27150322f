"""Where A/B experiments live: the ``experiments`` and ``experiment_looks`` tables.

Every SQL statement of the experiment policy is here; the policy reads and writes
:class:`Experiment` values and :class:`Step` lists, never rows or JSON text. JSON columns go
through :mod:`edgeloop_control.infra.jsoncolumn`, so a corrupt one is an error naming the
experiment and column instead of a ``JSONDecodeError`` in the middle of a tick.

The ``weight`` column keeps the challenger's share in percent (databases written before
shares became fractions stay readable); :class:`Experiment` holds it as a fraction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edgeloop_control.infra import jsoncolumn, sql
from edgeloop_control.infra.db import ControlDB

from .config import ExperimentConfig, percent

ACTIVE = ("running", "decided")  # traffic is split and the statistics are updated
ENDING = ("promoting", "rolling_back")  # a decision was taken; its actions are under way
FINAL = ("promoted", "rolled_back")
STATES = ACTIVE + ENDING + FINAL
# Only one process carries out an experiment's actions at a time (the daemon's tick and a CLI
# `stop` could otherwise publish the same rollback twice); a crashed holder's lease expires.
LEASE_S = 120.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    model TEXT NOT NULL,
    champion TEXT NOT NULL,
    challenger TEXT NOT NULL,
    devices TEXT NOT NULL,
    weight REAL NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    auto_decide INTEGER NOT NULL,
    cause TEXT,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    test TEXT NOT NULL,
    totals TEXT NOT NULL,
    report TEXT,
    decision TEXT,
    pending TEXT NOT NULL DEFAULT '[]',
    flags TEXT NOT NULL DEFAULT '{}',
    revisions TEXT NOT NULL DEFAULT '{}',
    rollout TEXT,
    last_error TEXT,
    retry_at REAL,
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS experiments_model ON experiments(model, seq);
CREATE TABLE IF NOT EXISTS experiment_looks (
    experiment TEXT NOT NULL,
    seq INTEGER NOT NULL,
    t REAL NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (experiment, seq)
);
-- Ticks read an experiment's new telemetry rows by (experiment, rowid); without this index
-- every tick would scan all of variant_stats.
CREATE INDEX IF NOT EXISTS variant_stats_experiment ON variant_stats(experiment);
"""


class StepKind(Enum):
    """What is left to do after a decision, in the order the steps run."""

    DESIRED = "desired"  # put one device back on the champion at 100 %
    REGISTRY = "registry"  # promote the challenger, or stop calling it the challenger
    ROLLOUT = "rollout"  # hand the promoted version to a staged rollout


@dataclass(frozen=True)
class Step:
    kind: StepKind
    device: str | None = None  # only for DESIRED

    def __str__(self) -> str:
        # The stored and shown form ("desired:d1", "registry"), as operators read it.
        return self.kind.value if self.device is None else f"{self.kind.value}:{self.device}"

    @classmethod
    def parse(cls, text: str) -> Step:
        kind, _, device = text.partition(":")
        return cls(StepKind(kind), device or None)


def steps_for(action: str, devices: Iterable[str]) -> list[Step]:
    """The pending steps of a decision: devices back before the registry, the registry
    before the rollout."""
    if action == "promote":
        return [Step(StepKind.REGISTRY), Step(StepKind.ROLLOUT)]
    return [Step(StepKind.DESIRED, d) for d in devices] + [Step(StepKind.REGISTRY)]


@dataclass
class Experiment:
    """One A/B experiment as stored. ``share`` is the challenger's traffic as a fraction.

    ``test``, ``totals``, ``report`` and ``decision`` are the documents of the modules
    that own them (:class:`~edgeloop_control.stats.MixtureSPRT`,
    :class:`~.totals.Totals`, the statistics report), kept as they serialise themselves.
    """

    id: str
    seq: int
    model: str
    champion: str  # version, e.g. "v1"
    challenger: str
    devices: list[str]
    share: float
    kind: str  # "binary" or "continuous"
    state: str
    auto_decide: bool
    cause: str | None
    config: ExperimentConfig
    created_at: float
    updated_at: float
    test: dict[str, Any]
    totals: dict[str, Any]
    ended_at: float | None = None
    report: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    pending: list[Step] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    rollout: dict[str, Any] | None = None
    last_error: str | None = None
    retry_at: float | None = None

    @property
    def champion_ref(self) -> str:
        return f"{self.model}@{self.champion}"

    @property
    def challenger_ref(self) -> str:
        return f"{self.model}@{self.challenger}"

    @property
    def weight_percent(self) -> float:
        return percent(self.share)


def _decode(row: sql.Row) -> Experiment:
    exp_id = row["id"]

    def col(name: str, default: Any) -> Any:
        return jsoncolumn.decode(row[name], default, where=f"experiments.{name} of {exp_id}")

    return Experiment(
        id=exp_id,
        seq=int(row["seq"]),
        model=row["model"],
        champion=row["champion"],
        challenger=row["challenger"],
        devices=list(col("devices", [])),
        share=float(row["weight"]) / 100.0,
        kind=row["kind"],
        state=row["state"],
        auto_decide=bool(row["auto_decide"]),
        cause=row["cause"],
        config=ExperimentConfig.from_stored(col("config", {})),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        ended_at=row["ended_at"],
        test=col("test", {}),
        totals=col("totals", {}),
        report=col("report", None),
        decision=col("decision", None),
        pending=[Step.parse(s) for s in col("pending", [])],
        flags=dict(col("flags", {})),
        revisions={str(k): int(v) for k, v in col("revisions", {}).items()},
        rollout=col("rollout", None),
        last_error=row["last_error"],
        retry_at=row["retry_at"],
    )


def _optional(value: Any) -> str | None:
    return None if value is None else jsoncolumn.encode(value)


def _pending(steps: Iterable[Step]) -> str:
    return jsoncolumn.encode([str(s) for s in steps])


class ExperimentStore:
    """The experiment tables of the control database."""

    def __init__(self, db: ControlDB) -> None:
        self.db = db
        db.conn.executescript(SCHEMA)

    # -- reading -------------------------------------------------------------------

    def get(self, exp_id: str) -> Experiment:
        """The experiment, or :class:`KeyError`."""
        row = self.db.conn.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise KeyError(exp_id)
        return _decode(row)

    def all(self) -> list[Experiment]:
        """Every experiment, oldest first."""
        rows = self.db.conn.execute("SELECT * FROM experiments ORDER BY created_at, id")
        return [_decode(r) for r in rows.fetchall()]

    def due(self) -> list[tuple[str, str]]:
        """(id, state) of the experiments a tick looks at or acts on, oldest first."""
        states = ACTIVE + ENDING
        rows = self.db.conn.execute(
            f"SELECT id, state FROM experiments WHERE state IN "
            f"({','.join('?' * len(states))}) OR pending != '[]' ORDER BY created_at",
            states,
        ).fetchall()
        return [(r["id"], r["state"]) for r in rows]

    def devices(self, exp_id: str) -> list[str]:
        """The experiment's devices only (what a tick checks ownership of, every second)."""
        row = self.db.conn.execute(
            "SELECT devices FROM experiments WHERE id = ?", (exp_id,)
        ).fetchone()
        if row is None:
            raise KeyError(exp_id)
        return list(jsoncolumn.decode(row["devices"], [], where=f"experiments.devices of {exp_id}"))

    def looks(self, exp_id: str) -> list[dict[str, Any]]:
        rows = self.db.conn.execute(
            "SELECT seq, doc FROM experiment_looks WHERE experiment = ? ORDER BY seq", (exp_id,)
        ).fetchall()
        where = f"experiment_looks.doc of {exp_id}"
        return [{"seq": r["seq"], **jsoncolumn.decode(r["doc"], {}, where=where)} for r in rows]

    # -- writing (``conn``: the caller's open transaction) ---------------------------

    def insert(self, conn: sql.Connection, exp: Experiment) -> Experiment:
        """Store a new experiment; its ``seq`` and ``id`` are assigned here (per model)."""
        seq = int(
            conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments WHERE model = ?", (exp.model,)
            ).fetchone()[0]
        )
        exp.seq, exp.id = seq, f"ab-{exp.model}-{seq}"
        conn.execute(
            "INSERT INTO experiments(id, seq, model, champion, challenger, devices, weight, "
            "kind, state, auto_decide, cause, config, created_at, updated_at, test, totals) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (exp.id, seq, exp.model, exp.champion, exp.challenger,
             jsoncolumn.encode(exp.devices), exp.weight_percent, exp.kind, exp.state,
             int(exp.auto_decide), exp.cause, jsoncolumn.encode(exp.config.to_dict()),
             exp.created_at, exp.updated_at, jsoncolumn.encode(exp.test),
             jsoncolumn.encode(exp.totals)),
        )  # fmt: skip
        return exp

    def set_revisions(self, conn: sql.Connection, exp_id: str, revs: dict[str, int]) -> None:
        conn.execute(
            "UPDATE experiments SET revisions = ?, updated_at = ? WHERE id = ?",
            (jsoncolumn.encode(revs), time.time(), exp_id),
        )

    def abort_start(
        self,
        conn: sql.Connection,
        exp_id: str,
        decision: dict[str, Any],
        pending: list[Step],
        revisions: dict[str, int],
    ) -> None:
        conn.execute(
            "UPDATE experiments SET state = 'rolling_back', decision = ?, pending = ?, "
            "revisions = ?, updated_at = ? WHERE id = ?",
            (jsoncolumn.encode(decision), _pending(pending), jsoncolumn.encode(revisions),
             time.time(), exp_id),
        )  # fmt: skip

    def save_look(
        self,
        conn: sql.Connection,
        exp: Experiment,
        now: float,
        *,
        test: dict[str, Any],
        totals: dict[str, Any],
        report: dict[str, Any],
        state: str,
        decision: dict[str, Any] | None,
        pending: list[Step],
        flags: dict[str, Any],
    ) -> bool:
        """Compare-and-set on the state ``exp`` was read in; False if it changed meanwhile."""
        cur = conn.execute(
            "UPDATE experiments SET test = ?, totals = ?, report = ?, flags = ?, "
            "state = ?, decision = ?, pending = ?, updated_at = ? "
            "WHERE id = ? AND state = ?",
            (jsoncolumn.encode(test), jsoncolumn.encode(totals), jsoncolumn.encode(report),
             jsoncolumn.encode(flags), state, _optional(decision), _pending(pending), now,
             exp.id, exp.state),
        )  # fmt: skip
        return cur.rowcount == 1

    def add_look(
        self, conn: sql.Connection, exp_id: str, now: float, record: dict[str, Any]
    ) -> None:
        seq = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM experiment_looks WHERE experiment = ?",
            (exp_id,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO experiment_looks(experiment, seq, t, doc) VALUES (?,?,?,?)",
            (exp_id, seq, now, jsoncolumn.encode(record)),
        )

    def set_flags(self, conn: sql.Connection, exp_id: str, flags: dict[str, Any]) -> None:
        conn.execute(
            "UPDATE experiments SET flags = ? WHERE id = ?", (jsoncolumn.encode(flags), exp_id)
        )

    def set_rollout(self, conn: sql.Connection, exp_id: str, rollout: dict[str, Any]) -> None:
        conn.execute(
            "UPDATE experiments SET rollout = ? WHERE id = ?",
            (jsoncolumn.encode(rollout), exp_id),
        )

    def step_failed(self, conn: sql.Connection, exp_id: str, error: str, retry_at: float) -> None:
        conn.execute(
            "UPDATE experiments SET last_error = ?, retry_at = ? WHERE id = ?",
            (error, retry_at, exp_id),
        )

    def step_done(self, conn: sql.Connection, exp_id: str, step: Step) -> None:
        """Drop ``step`` from the pending list (read again inside the transaction)."""
        row = conn.execute("SELECT pending FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        where = f"experiments.pending of {exp_id}"
        left = [s for s in jsoncolumn.decode(row["pending"], [], where=where) if s != str(step)]
        conn.execute(
            "UPDATE experiments SET pending = ?, last_error = NULL, retry_at = NULL, "
            "updated_at = ? WHERE id = ?",
            (jsoncolumn.encode(left), time.time(), exp_id),
        )

    def finish(self, conn: sql.Connection, exp_id: str, from_state: str, to: str) -> bool:
        """Move to a final state if still in ``from_state``; False if someone else did."""
        now = time.time()
        cur = conn.execute(
            "UPDATE experiments SET state = ?, ended_at = ?, updated_at = ? "
            "WHERE id = ? AND state = ?",
            (to, now, now, exp_id, from_state),
        )
        return cur.rowcount == 1

    # -- leases ----------------------------------------------------------------------

    def take_lease(self, exp_id: str, holder: str, now: float) -> bool:
        """Hold (or renew) the right to act on ``exp_id``; False while another holder's
        unexpired lease stands."""
        cur = self.db.conn.execute(
            "UPDATE experiments SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
            "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
            (holder, now + LEASE_S, exp_id, holder, now),
        )
        return cur.rowcount == 1

    def drop_lease(self, exp_id: str, holder: str) -> None:
        self.db.conn.execute(
            "UPDATE experiments SET lease_owner = NULL, lease_until = NULL "
            "WHERE id = ? AND lease_owner = ?",
            (exp_id, holder),
        )
