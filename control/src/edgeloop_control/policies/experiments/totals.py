"""Per-arm totals of one experiment, read incrementally from ``variant_stats``.

Agents report per-variant counters for each telemetry interval; ingestion stores one
``variant_stats`` row per report and variant, tagged with the desired state's experiment id.
An experiment's totals are the sums of its rows. They are kept in the experiment's own row
together with a cursor (the last ``variant_stats`` rowid folded in), so each tick reads only
new rows and a daemon restart continues from exactly the same totals.

The first report of each device in an experiment is left out: the agent's counters are not
reset when a new desired state arrives, so that report can also hold traffic served under the
previous desired state (the champion at 100 %), which would skew the sample ratio. Dropping a
whole report drops both arms alike, so it biases nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeloop_agent.wire import keysketch
from edgeloop_agent.wire.histogram import LatencyHistogram
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.stats import BinaryStats, ContinuousStats

log = logging.getLogger("edgeloop.control.experiments")

ARMS = ("champion", "challenger")


@dataclass
class ArmTotals:
    """Sums over an arm's reports: traffic, errors, latency and labelled outcomes."""

    requests: int = 0
    predictions: int = 0
    errors: int = 0
    cls_n: int = 0
    cls_correct: int = 0
    reg_n: int = 0
    reg_sum_abs: float = 0.0
    reg_sum_sq: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    requests_by_device: dict[str, int] = field(default_factory=dict)
    # Assignments, the sample-ratio check's unit: requests routed with and without a key
    # (an agent that does not count them: all its requests as unkeyed), and the distinct
    # keys, every device's and interval's sketch merged (register-wise max = union).
    keyed: int = 0
    unkeyed: int = 0
    key_sketch: keysketch.Registers | None = None
    # Keyed requests whose report's sketch was unusable: the arm's distinct keys would be
    # undercounted, so the sample ratio falls back to requests (a false mismatch otherwise).
    keyed_unsketched: int = 0

    @property
    def keys_complete(self) -> bool:
        return self.keyed_unsketched == 0 and (self.key_sketch is not None or self.keyed == 0)

    @property
    def distinct_keys(self) -> int:
        return 0 if self.key_sketch is None else round(keysketch.estimate(self.key_sketch))

    @property
    def labelled(self) -> int:
        return self.cls_n + self.reg_n

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p99_ms(self) -> float | None:
        p99 = self.latency.quantile(0.99)
        return None if p99 is None else p99 * 1000.0

    def binary(self) -> BinaryStats:
        return BinaryStats(self.cls_n, self.cls_correct)

    def continuous(self) -> ContinuousStats:
        # The loss is the absolute error |e|: its sum is reported, and the sum of its squares
        # is exactly the reported sum of squared errors (|e|² = e²). See docs/experiments.md.
        if self.reg_n == 0:
            return ContinuousStats()
        return ContinuousStats(self.reg_n, self.reg_sum_abs, self.reg_sum_sq)

    def add_row(self, row: Mapping[str, Any]) -> None:
        self.requests += int(row["requests"])
        self.predictions += int(row["predictions"])
        self.errors += int(row["errors"])
        self.cls_n += int(row["cls_n"])
        self.cls_correct += int(row["cls_correct"])
        self.reg_n += int(row["reg_n"])
        self.reg_sum_abs += float(row["reg_sum_abs"])
        self.reg_sum_sq += float(row["reg_sum_sq"])
        self._add_assigned(row)
        device = str(row["device"])
        self.requests_by_device[device] = self.requests_by_device.get(device, 0) + int(
            row["requests"]
        )
        if row["latency"]:
            try:
                self.latency.merge(LatencyHistogram.from_dict(json.loads(row["latency"])))
            except (ValueError, TypeError, KeyError) as exc:
                # A histogram we cannot read loses its latency only, not the counts.
                log.warning("ignoring the latency of report %s: %s", row["report_id"], exc)

    def _add_assigned(self, row: Mapping[str, Any]) -> None:
        if row["keyed"] is None:  # an agent that does not count assignments
            self.unkeyed += int(row["requests"])
            return
        keyed = int(row["keyed"])
        self.keyed += keyed
        self.unkeyed += int(row["unkeyed"])
        if not row["sketch"]:
            self.keyed_unsketched += keyed
        else:
            try:
                registers = keysketch.from_wire(json.loads(row["sketch"]))
            except (ValueError, TypeError) as exc:
                log.warning("ignoring the key sketch of report %s: %s", row["report_id"], exc)
                self.keyed_unsketched += keyed
                return
            if self.key_sketch is None:
                self.key_sketch = registers
            else:
                keysketch.merge(self.key_sketch, registers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyed": self.keyed,
            "unkeyed": self.unkeyed,
            "key_sketch": None if self.key_sketch is None else keysketch.to_wire(self.key_sketch),
            "keyed_unsketched": self.keyed_unsketched,
            "requests": self.requests,
            "predictions": self.predictions,
            "errors": self.errors,
            "cls_n": self.cls_n,
            "cls_correct": self.cls_correct,
            "reg_n": self.reg_n,
            "reg_sum_abs": self.reg_sum_abs,
            "reg_sum_sq": self.reg_sum_sq,
            "latency": self.latency.to_dict(),
            "requests_by_device": dict(self.requests_by_device),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmTotals:
        # Totals stored before assignments were counted: every request was unkeyed.
        sketch = data.get("key_sketch")
        return cls(
            keyed=int(data.get("keyed", 0)),
            unkeyed=int(data.get("unkeyed", data["requests"])),
            key_sketch=None if sketch is None else keysketch.from_wire(sketch),
            keyed_unsketched=int(data.get("keyed_unsketched", 0)),
            requests=int(data["requests"]),
            predictions=int(data["predictions"]),
            errors=int(data["errors"]),
            cls_n=int(data["cls_n"]),
            cls_correct=int(data["cls_correct"]),
            reg_n=int(data["reg_n"]),
            reg_sum_abs=float(data["reg_sum_abs"]),
            reg_sum_sq=float(data["reg_sum_sq"]),
            latency=LatencyHistogram.from_dict(data["latency"]),
            requests_by_device={str(k): int(v) for k, v in data["requests_by_device"].items()},
        )


@dataclass
class Totals:
    """Both arms plus the bookkeeping that makes reading them incremental."""

    cursor: int = 0  # last variant_stats rowid folded in
    # drift_windows rowid when the experiment started: later windows are the experiment's.
    # (A window's ``end`` is a row count for count windows, so time cannot scope them.)
    drift_since: int = 0
    first_reports: dict[str, str] = field(default_factory=dict)  # device -> skipped report id
    skipped_rows: int = 0
    rows: int = 0
    arms: dict[str, ArmTotals] = field(default_factory=lambda: {a: ArmTotals() for a in ARMS})

    @property
    def champion(self) -> ArmTotals:
        return self.arms["champion"]

    @property
    def challenger(self) -> ArmTotals:
        return self.arms["challenger"]

    def counts(self) -> tuple[int, ...]:
        """What a look is about: labelled outcomes and requests per arm."""
        a, b = self.champion, self.challenger
        return (a.labelled, b.labelled, a.requests, b.requests)

    def advance(
        self,
        db: ControlDB,
        experiment: str,
        variants: Mapping[str, str],
        devices: list[str],
    ) -> int:
        """Fold in the experiment's rows stored since the last call; returns how many.

        ``variants`` maps a variant name (``model@version``) to its arm; rows of other
        variants (a shadow, requests rejected before routing) are not part of the comparison.
        Rows are read in rowid order: ingestion appends them in one writer's transactions, so
        a row with a smaller rowid can never appear after one with a larger rowid was read.
        """
        rows = db.conn.execute(
            "SELECT s.rowid AS rid, s.report_id, s.variant, device, requests, predictions, "
            "errors, cls_n, cls_correct, reg_n, reg_sum_abs, reg_sum_sq, latency, k.keyed, "
            "k.unkeyed, k.sketch FROM variant_stats s LEFT JOIN variant_keys k "
            "ON k.report_id = s.report_id AND k.variant = s.variant "
            "WHERE experiment = ? AND s.rowid > ? ORDER BY s.rowid",
            (experiment, self.cursor),
        ).fetchall()
        allowed = set(devices)
        for row in rows:
            self.cursor = max(self.cursor, int(row["rid"]))
            device = str(row["device"])
            if device not in allowed:
                continue
            first = self.first_reports.setdefault(device, str(row["report_id"]))
            if first == row["report_id"]:
                self.skipped_rows += 1
                continue
            arm = variants.get(str(row["variant"]))
            if arm is None:
                continue
            self.arms[arm].add_row(row)
            self.rows += 1
        return len(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "drift_since": self.drift_since,
            "first_reports": dict(self.first_reports),
            "skipped_rows": self.skipped_rows,
            "rows": self.rows,
            "arms": {a: t.to_dict() for a, t in self.arms.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Totals:
        return cls(
            cursor=int(data["cursor"]),
            drift_since=int(data["drift_since"]),
            first_reports={str(k): str(v) for k, v in data["first_reports"].items()},
            skipped_rows=int(data["skipped_rows"]),
            rows=int(data["rows"]),
            arms={a: ArmTotals.from_dict(data["arms"][a]) for a in ARMS},
        )


@dataclass(frozen=True)
class OutputWindow:
    """One completed drift window of the challenger, as the drift guardrail reads it."""

    device: str
    report_id: str
    # KS p-value of the challenger's output against the challenger's own reference profile.
    p_value: float
    # The champion's output p-value in the same report from the same device (the same
    # inputs, give or take the routing), or None if it had no window there.
    champion_p_value: float | None


def output_windows(
    db: ControlDB,
    champion: str,
    challenger: str,
    devices: list[str],
    since_rowid: int,
) -> list[OutputWindow]:
    """The challenger's drift windows on ``devices`` stored after row ``since_rowid``.

    Each with the challenger's output p-value and the champion's in the same report from
    the same device (the drift guardrail compares them; see ``evaluate.drift_guardrail``).
    Windows without enough data or without an output p-value are left out.
    """
    if not devices:
        return []
    marks = ",".join("?" * len(devices))
    # json_extract in SQLite, not json.loads per row in Python: this runs every tick over
    # every window since the start. A malformed doc yields NULL (json_valid guards it).
    rows = db.conn.execute(
        f"SELECT report_id, device, variant, enough_data, "
        f"CASE WHEN json_valid(doc) THEN json_extract(doc, '$.output.ks_p') END AS p "
        f"FROM drift_windows "
        f"WHERE variant IN (?, ?) AND rowid > ? AND device IN ({marks}) ORDER BY rowid",
        (champion, challenger, since_rowid, *devices),
    ).fetchall()

    def output_p(row: Any) -> float | None:
        p = row["p"]
        if not row["enough_data"] or isinstance(p, (bool, str)) or p is None:
            return None
        return float(p) if isinstance(p, (int, float)) and 0.0 <= p <= 1.0 else None

    champion_p: dict[tuple[str, str], float] = {}
    for r in rows:
        p = output_p(r) if r["variant"] == champion else None
        if p is not None:
            key = (str(r["report_id"]), str(r["device"]))
            champion_p[key] = min(p, champion_p.get(key, 1.0))
    out = []
    for r in rows:
        p = output_p(r) if r["variant"] == challenger else None
        if p is not None:
            key = (str(r["report_id"]), str(r["device"]))
            out.append(OutputWindow(key[1], key[0], p, champion_p.get(key)))
    return out


def drift_rowid(db: ControlDB) -> int:
    """The newest drift window's rowid now (0 if none)."""
    return int(db.conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM drift_windows").fetchone()[0])
