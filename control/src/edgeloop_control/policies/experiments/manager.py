"""A/B experiments between a champion and a challenger, decided by always-valid statistics.

Lifecycle (docs/experiments.md)::

    running --decision (auto)------------> promoting --registry--> promoted --> staged rollout
    running --decision (auto) or stop()--> rolling_back --desired, registry--> rolled_back
    running --decision (manual)----------> decided --promote()--> promoting
                                                   --stop()-----> rolling_back

Every state, the sequential test, the per-arm totals and the pending actions live in the
control database (tables ``experiments`` and ``experiment_looks``), and every transition is
a compare-and-set on the state inside one transaction. So the daemon and CLI commands can act
on the same experiment without deciding twice, a restart continues exactly where the last
tick stopped, and an action that failed half-way (a broker outage during rollback) is retried
from the step that failed.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgeloop_control.fleet.desired import (
    DeployError,
    check_device_ids,
    plan_desired,
    publish_artifact,
    publish_desired,
)
from edgeloop_control.infra.db import ControlDB
from edgeloop_control.infra.signing import DesiredSigner
from edgeloop_control.infra.workspace import Workspace
from edgeloop_control.stats import MixtureSPRT

from .config import ExperimentConfig, ExperimentError
from .evaluate import (
    KIND_OF_TASK,
    Evaluation,
    evaluate,
    guardrails,
    labels_missing,
    look_record,
    new_test,
    update_test,
)
from .totals import Totals, drift_rowid, output_windows

log = logging.getLogger("edgeloop.control.experiments")

ACTIVE = ("running", "decided")  # traffic is split and the statistics are updated
ENDING = ("promoting", "rolling_back")  # a decision was taken; its actions are under way
FINAL = ("promoted", "rolled_back")
STATES = ACTIVE + ENDING + FINAL
RETRY_S = 30.0  # a failed action (broker down, registry locked) is retried this much later
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

_JSON = ("devices", "config", "test", "totals", "report", "decision", "pending", "flags",
         "revisions", "rollout")  # fmt: skip


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class RolloutStarter(Protocol):
    def start(
        self,
        model_ref: str,
        *,
        devices: list[str],
        canary: float | None = None,
        step: float | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Entry:
    """A model version as a desired-state entry describes it (enough for plan_desired)."""

    name: str
    version: str
    sha256: str
    size: int
    signature: str | None

    @classmethod
    def from_entry(cls, m: dict[str, Any]) -> _Entry:
        return cls(m["name"], m["version"], m["sha256"], m.get("size"), m.get("signature"))


class _Conflict(Exception):
    """The experiment's state changed under us (another process acted first)."""


def _weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ExperimentError(f"weight must be a number, got {value!r}")
    if not 0.0 < float(value) < 100.0:
        raise ExperimentError(
            f"weight is the challenger's share of traffic in percent and must be strictly "
            f"between 0 and 100, got {float(value):g}"
        )
    return float(value)


class ExperimentManager:
    """Starts, evaluates and ends A/B experiments; a daemon policy (``tick`` every second).

    ``publisher`` is anything with ``publish(topic, payload, retain=...)`` (the daemon's
    session or a short-lived :class:`~edgeloop_control.infra.mqtt.ControlClient`); ``None``
    for read-only use (status, looks). ``rollouts`` receives promoted versions; without it a
    promotion's rollout waits for a manager that has one (the daemon's).
    """

    name = "experiments"

    def __init__(
        self,
        ws: Workspace,
        db: ControlDB,
        publisher: Publisher | None,
        *,
        rollouts: RolloutStarter | None = None,
        config: ExperimentConfig | None = None,
    ) -> None:
        self.ws = ws
        self.db = db
        self.publisher = publisher
        self.rollouts = rollouts
        self.config = config if config is not None else ExperimentConfig.from_workspace(ws)
        self.prefix = ws.topic_prefix
        self._desired_signer: DesiredSigner | None = None
        self.db.conn.executescript(SCHEMA)
        self._registry: Any = None
        self._owner = f"{os.getpid()}:{secrets.token_hex(4)}"

    def _signer(self) -> DesiredSigner:
        if self._desired_signer is None:
            self._desired_signer = DesiredSigner.for_workspace(self.ws)
        return self._desired_signer

    # -- registry ------------------------------------------------------------------

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from edgeloop_control.registry import Registry, RegistryError

            try:
                self._registry = Registry.for_workspace(self.ws, create=False, sync_remote=False)
            except RegistryError as exc:
                raise ExperimentError(str(exc)) from None
        return self._registry

    def _resolve(self, model: str, ref: str) -> Any:
        """``v2``, ``sensor@v2`` or ``sensor#champion`` -> the registry's ModelVersion."""
        from edgeloop_control.registry import RegistryError

        if not isinstance(ref, str) or not ref.strip():
            raise ExperimentError(f"a model version is required, got {ref!r}")
        ref = ref.strip()
        full = ref if any(sep in ref for sep in "@#:") else f"{model}@{ref}"
        try:
            mv = self.registry.get(full)
        except RegistryError as exc:
            raise ExperimentError(str(exc)) from None
        if mv.name != model:
            raise ExperimentError(f"{ref} is a version of {mv.name!r}, not of {model!r}")
        return mv

    # -- starting ------------------------------------------------------------------

    def start(
        self,
        model: str,
        champion: str,
        challenger: str,
        devices: Sequence[str],
        *,
        weight: float | None = None,
        cause: str | None = None,
        auto_decide: bool | None = None,
    ) -> dict[str, Any]:
        """Split the devices' traffic champion (100 − weight) / challenger (weight) and start
        measuring. ``weight`` defaults to ``challenger_weight`` and ``auto_decide`` to the
        configured one. Returns the experiment (as in :meth:`status`, without looks)."""
        cfg = self.config
        weight = _weight(cfg.challenger_weight if weight is None else weight)
        auto = cfg.auto_decide if auto_decide is None else auto_decide
        if not isinstance(auto, bool):
            raise ExperimentError(f"auto_decide must be true, false or None, got {auto!r}")
        if isinstance(devices, str):
            raise ExperimentError("devices must be a list of device ids, not one string")
        try:
            devices = check_device_ids(list(devices))
        except DeployError as exc:
            raise ExperimentError(str(exc)) from None
        if self.publisher is None:
            raise ExperimentError(
                "starting an experiment publishes desired state, and this manager has no MQTT "
                "publisher"
            )
        champ = self._resolve(model, champion)
        chall = self._resolve(model, challenger)
        if champ.version == chall.version:
            raise ExperimentError(
                f"champion and challenger are both {champ.ref}; an experiment needs two versions"
            )
        if self.registry.stages(model).get("champion") == chall.version:
            raise ExperimentError(
                f"{chall.ref} is already the registry's champion of {model}; choose another "
                f"challenger"
            )
        data = {mv.version: self.registry.artifact_bytes(mv) for mv in (champ, chall)}
        tasks = {mv.version: _task(mv, data[mv.version]) for mv in (champ, chall)}
        if tasks[champ.version] != tasks[chall.version]:
            raise ExperimentError(
                f"{champ.ref} is a {tasks[champ.version]} model and {chall.ref} a "
                f"{tasks[chall.version]} model; they cannot be compared"
            )
        kind = KIND_OF_TASK[tasks[champ.version]]
        self._check_devices(model, devices)
        now = time.time()
        test = new_test(kind, cfg)
        with self.db.transaction() as conn:
            self._check_free(devices)  # again, under the write lock: no two starts race
            seq = int(
                conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM experiments WHERE model = ?", (model,)
                ).fetchone()[0]
            )
            exp_id = f"ab-{model}-{seq}"
            conn.execute(
                "INSERT INTO experiments(id, seq, model, champion, challenger, devices, weight, "
                "kind, state, auto_decide, cause, config, created_at, updated_at, test, totals) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (exp_id, seq, model, champ.version, chall.version, json.dumps(devices), weight,
                 kind, "running", int(auto), cause, json.dumps(cfg.to_dict()), now, now,
                 json.dumps(test.to_dict()),
                 json.dumps(Totals(drift_since=drift_rowid(self.db)).to_dict())),
            )  # fmt: skip
        revisions: dict[str, int] = {}
        try:
            for mv in (champ, chall):
                publish_artifact(self.publisher, self.prefix, mv, data[mv.version])  # type: ignore[arg-type]
            # The registry says which version is under test; promotion clears it again.
            self.registry.promote(model, chall.version, "challenger")
            for device in devices:
                previous = self.db.desired(device)
                prev_doc = previous[1] if previous else None
                doc = plan_desired(
                    prev_doc,
                    [(champ, 100.0 - weight), (chall, weight)],
                    _shadows(prev_doc, {champ.version, chall.version}),
                    experiment=exp_id,
                )
                publish_desired(
                    self.publisher,  # type: ignore[arg-type]
                    self.db,
                    self.prefix,
                    device,
                    doc,
                    signer=self._signer(),
                )
                revisions[device] = doc["revision"]
        except Exception as exc:
            self._abort_start(exp_id, devices, revisions, exc)
            raise ExperimentError(
                f"could not start {exp_id}: {exc}; the devices that already received it are "
                f"being returned to the champion"
            ) from exc
        message = (
            f"{exp_id}: A/B experiment {champ.ref} ({100 - weight:g}%) vs {chall.ref} "
            f"({weight:g}%) started on {', '.join(devices)}"
            + (f" (cause: {cause})" if cause else "")
            + ("" if auto else "; decisions wait for an operator")
        )
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE experiments SET revisions = ?, updated_at = ? WHERE id = ?",
                (json.dumps(revisions), time.time(), exp_id),
            )
            self.db.add_event(
                "ab_started",
                message,
                subject=exp_id,
                data={"model": model, "champion": champ.ref, "challenger": chall.ref,
                      "devices": devices, "weight": weight, "revisions": revisions,
                      "cause": cause, "auto_decide": auto},
            )  # fmt: skip
        log.info(message)
        return self._summary(self._row(exp_id))

    def _check_devices(self, model: str, devices: list[str]) -> None:
        from edgeloop_control.policies.rollout.store import RolloutStore

        # A rollout also writes these devices' desired state: one owner at a time.
        rolling = RolloutStore(self.db).active_devices()
        clash = sorted(d for d in devices if d in rolling)
        if clash:
            owners = sorted({rolling[d] for d in clash})
            raise ExperimentError(
                f"{', '.join(clash)} in running rollout {', '.join(owners)}; wait for it to "
                f"finish or stop it with `edgeloop rollout abort {owners[0]}`"
            )
        for device in devices:
            previous = self.db.desired(device)
            others = sorted(
                {m["name"] for m in (previous[1]["models"] if previous else [])} - {model}
            )
            if others:
                raise ExperimentError(
                    f"device {device} serves {', '.join(others)}, not {model}; an experiment "
                    f"replaces what a device serves, so choose devices that run {model}"
                )
        self._check_free(devices)

    def _check_free(self, devices: list[str]) -> None:
        busy = self.db.conn.execute(
            f"SELECT id, model, champion, challenger, state, devices FROM experiments "
            f"WHERE state IN ({','.join('?' * len(ACTIVE + ENDING))})",
            ACTIVE + ENDING,
        ).fetchall()
        for row in busy:
            clash = sorted(set(json.loads(row["devices"])) & set(devices))
            if clash:
                raise ExperimentError(
                    f"{', '.join(clash)} already in experiment {row['id']} "
                    f"({row['model']}@{row['champion']} vs {row['model']}@{row['challenger']}, "
                    f"{row['state']}); end it first with `edgeloop ab stop {row['id']}`"
                )

    def _abort_start(
        self, exp_id: str, devices: list[str], revisions: dict[str, int], exc: Exception
    ) -> None:
        reason = f"Start failed: {exc}"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE experiments SET state = 'rolling_back', decision = ?, pending = ?, "
                "revisions = ?, updated_at = ? WHERE id = ?",
                (
                    json.dumps({"action": "rollback", "reason": reason, "t": time.time(),
                                "source": "error"}),
                    json.dumps([f"desired:{d}" for d in devices] + ["registry"]),
                    json.dumps(revisions),
                    time.time(),
                    exp_id,
                ),
            )  # fmt: skip
            self.db.add_event("ab_failed", f"{exp_id}: {reason}", subject=exp_id)
        log.error("%s: %s", exp_id, reason)
        try:
            self._act(exp_id, time.time(), force=True)
        except Exception:  # the daemon's next tick retries; the original error matters more
            log.exception("%s: rollback after a failed start did not finish", exp_id)

    # -- the policy ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Evaluate running experiments and carry out pending actions; idempotent."""
        states = ACTIVE + ENDING
        rows = self.db.conn.execute(
            f"SELECT id, state FROM experiments WHERE state IN "
            f"({','.join('?' * len(states))}) OR pending != '[]' ORDER BY created_at",
            states,
        ).fetchall()
        for row in rows:
            try:
                if row["state"] in ACTIVE:
                    self._look(row["id"], now)
                self._act(row["id"], now)
            except Exception:  # one experiment's failure must not stop the others
                log.exception("experiment %s: tick failed", row["id"])

    def _look(self, exp_id: str, now: float) -> None:
        exp = self._row(exp_id)
        test, totals, ev, changed, cursor_moved = self._evaluate(exp, now)
        flags = dict(exp["flags"])
        events: list[tuple[str, str]] = []
        state, decision, pending = exp["state"], exp["decision"], exp["pending"]
        if state == "running" and ev.action != "continue":
            decision = {"action": ev.action, "reason": ev.reason, "t": now, "source": ev.source}
            if exp["auto_decide"]:
                state = "promoting" if ev.action == "promote" else "rolling_back"
                pending = _steps(ev.action, exp["devices"])
                events.append(("ab_decision", f"{exp_id}: {ev.reason}"))
            else:
                state = "decided"
                events.append(
                    (
                        "ab_decision",
                        f"{exp_id}: {ev.reason} Awaiting an operator: `edgeloop ab promote "
                        f"{exp_id}` or `edgeloop ab stop {exp_id}`.",
                    )
                )
        elif ev.action == "continue":
            served = totals.champion.requests + totals.challenger.requests
            if labels_missing(test) and served and not flags.get("labels_missing"):
                flags["labels_missing"] = True
                events.append(
                    (
                        "ab_waiting_for_labels",
                        f"{exp_id}: {served} requests served but no labelled outcomes yet for "
                        f"{_missing_arms(test)}; the experiment cannot decide without labels "
                        f"(feedback on {self.prefix}/<device>/feedback). Guardrails still apply.",
                    )
                )
            if ev.report["sequential"]["confidence_sequence_empty"] and not flags.get("review"):
                flags["review"] = True
                events.append(("ab_needs_review", f"{exp_id}: {ev.reason}"))
        if not (changed or cursor_moved or events or state != exp["state"]):
            return  # nothing new: an idempotent tick writes nothing
        try:
            self._save(exp, now, test, totals, ev, changed, state=state, decision=decision,
                       pending=pending, flags=flags, events=events)  # fmt: skip
        except _Conflict:
            log.info("%s changed state while it was evaluated; skipping this look", exp_id)

    def _save(
        self,
        exp: dict[str, Any],
        now: float,
        test: MixtureSPRT,
        totals: Totals,
        ev: Evaluation,
        changed: bool,
        *,
        state: str,
        decision: dict[str, Any] | None,
        pending: list[str],
        flags: dict[str, Any],
        events: list[tuple[str, str]],
    ) -> None:
        """Store a look and its consequences in one transaction, if the state is still the
        one the look started from (else :class:`_Conflict`: another process acted first)."""
        exp_id = exp["id"]
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE experiments SET test = ?, totals = ?, report = ?, flags = ?, "
                "state = ?, decision = ?, pending = ?, updated_at = ? "
                "WHERE id = ? AND state = ?",
                (
                    json.dumps(test.to_dict()),
                    json.dumps(totals.to_dict()),
                    json.dumps(ev.report),
                    json.dumps(flags),
                    state,
                    json.dumps(decision) if decision is not None else None,
                    json.dumps(pending),
                    now,
                    exp_id,
                    exp["state"],
                ),
            )
            if cur.rowcount != 1:
                raise _Conflict
            if changed:
                seq = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM experiment_looks WHERE experiment = ?",
                    (exp_id,),
                ).fetchone()[0]
                record = look_record(ev.report, now, ev.action)
                conn.execute(
                    "INSERT INTO experiment_looks(experiment, seq, t, doc) VALUES (?,?,?,?)",
                    (exp_id, seq, now, json.dumps(record)),
                )
            for kind, message in events:
                self.db.add_event(
                    kind,
                    message,
                    subject=exp_id,
                    data={"model": exp["model"], "decision": decision, "state": state},
                )
        for _, message in events:
            log.info(message)

    def _evaluate(
        self, exp: dict[str, Any], now: float
    ) -> tuple[MixtureSPRT, Totals, Evaluation, bool, bool]:
        """Fold new telemetry into copies of the stored state and evaluate (no writes)."""
        test = MixtureSPRT.from_dict(exp["test"])
        totals = Totals.from_dict(exp["totals"])
        before, cursor = totals.counts(), totals.cursor
        model = exp["model"]
        variants = {
            f"{model}@{exp['champion']}": "champion",
            f"{model}@{exp['challenger']}": "challenger",
        }
        totals.advance(self.db, exp["id"], variants, exp["devices"])
        update_test(test, totals)
        config = ExperimentConfig.from_dict(exp["config"])
        windows = output_windows(
            self.db,
            f"{model}@{exp['champion']}",
            f"{model}@{exp['challenger']}",
            exp["devices"],
            totals.drift_since,
        )
        ev = evaluate(
            test,
            totals,
            weight=exp["weight"],
            config=config,
            checks=guardrails(config, totals.challenger, windows),
            started_at=exp["created_at"],
            now=now,
        )
        return test, totals, ev, totals.counts() != before, totals.cursor != cursor

    # -- acting on a decision --------------------------------------------------------

    def _act(self, exp_id: str, now: float, *, force: bool = False) -> None:
        """Carry out the pending steps of a decided experiment, in order, one at a time.

        ``force`` ignores the retry delay of an earlier failure (an operator is asking now).
        Another process holding the lease is left to finish its work.
        """
        exp = self._row(exp_id)
        if not exp["pending"] and exp["state"] not in ENDING:
            return
        if not force and exp["retry_at"] is not None and now < exp["retry_at"]:
            return
        if not self._lease(exp_id, time.time()):
            return
        try:
            self._steps(exp_id, now)
        finally:
            self.db.conn.execute(
                "UPDATE experiments SET lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND lease_owner = ?",
                (exp_id, self._owner),
            )

    def _lease(self, exp_id: str, now: float) -> bool:
        cur = self.db.conn.execute(
            "UPDATE experiments SET lease_owner = ?, lease_until = ? WHERE id = ? AND "
            "(lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
            (self._owner, now + LEASE_S, exp_id, self._owner, now),
        )
        return cur.rowcount == 1

    def _steps(self, exp_id: str, now: float) -> None:
        exp = self._row(exp_id)
        for step in list(exp["pending"]):
            self._lease(exp_id, time.time())  # renew: a step may wait for the broker
            try:
                done = self._run_step(exp, step)
            except Exception as exc:
                message = f"{exp_id}: {step} failed, retrying in {RETRY_S:g} s: {exc}"
                with self.db.transaction() as conn:
                    conn.execute(
                        "UPDATE experiments SET last_error = ?, retry_at = ? WHERE id = ?",
                        (str(exc), now + RETRY_S, exp_id),
                    )
                    if str(exc) != exp["last_error"]:  # one event per distinct failure
                        self.db.add_event("ab_action_failed", message, subject=exp_id)
                log.warning(message)
                return
            if not done:
                # Steps run in order (devices back on the champion before the registry
                # says so; the registry before the rollout), so wait here.
                self._waiting(exp, step)
                break
            with self.db.transaction() as conn:
                current = self._row(exp_id)
                pending = [s for s in current["pending"] if s != step]
                conn.execute(
                    "UPDATE experiments SET pending = ?, last_error = NULL, retry_at = NULL, "
                    "updated_at = ? WHERE id = ?",
                    (json.dumps(pending), time.time(), exp_id),
                )
            exp = self._row(exp_id)
            self._finish_if_done(exp)
        self._finish_if_done(self._row(exp_id))

    def _run_step(self, exp: dict[str, Any], step: str) -> bool:
        """Do one step; False if this manager cannot do it (it stays pending)."""
        model, champion, challenger = exp["model"], exp["champion"], exp["challenger"]
        if step == "registry" and exp["state"] == "promoting":
            self.registry.promote(model, challenger, "champion")
            return True
        if step == "registry":  # rolling back: the challenger is no longer under test
            if self.registry.stages(model).get("challenger") == challenger:
                self.registry.demote(model, "challenger")
            return True
        if step == "rollout":
            if self.rollouts is None:
                return False
            devices = self.devices_running(model)
            if not devices:
                # (An empty list would mean "every device" to the rollout manager.)
                self.db.add_event(
                    "ab_pending",
                    f"{exp['id']}: no device serves {model} any more; nothing to roll out",
                    subject=exp["id"],
                )
                return True
            result = self.rollouts.start(
                f"{model}@{challenger}",
                devices=devices,
                reason=f"{exp['id']}: {(exp['decision'] or {}).get('reason', 'promoted')}",
            )
            rollout_id = result.get("id") if isinstance(result, dict) else None
            with self.db.transaction():
                self.db.conn.execute(
                    "UPDATE experiments SET rollout = ? WHERE id = ?",
                    (json.dumps({"id": rollout_id, "devices": devices}), exp["id"]),
                )
                self.db.add_event(
                    "ab_rollout_started",
                    f"{exp['id']}: staged rollout of {model}@{challenger} to {len(devices)} "
                    f"device(s) started" + (f" ({rollout_id})" if rollout_id else ""),
                    subject=exp["id"],
                    data={"rollout": result, "devices": devices},
                )
            return True
        if step.startswith("desired:"):
            if self.publisher is None:
                return False
            device = step.split(":", 1)[1]
            previous = self.db.desired(device)
            if previous is None or previous[1].get("experiment") != exp["id"]:
                # Someone deployed something else since: not ours to overwrite.
                self._note(exp["id"], "left_alone", device)
                return True
            doc = previous[1]
            entry = next(
                (m for m in doc["models"] if m["name"] == model and m["version"] == champion),
                None,
            )
            if entry is None:  # pragma: no cover - our own desired state always names it
                raise ExperimentError(f"{device}'s desired state does not name {model}@{champion}")
            new_doc = plan_desired(
                doc, [(_Entry.from_entry(entry), 100.0)], _shadows(doc, {champion, challenger})
            )
            publish_desired(
                self.publisher,  # type: ignore[arg-type]
                self.db,
                self.prefix,
                device,
                new_doc,
                signer=self._signer(),
            )
            return True
        raise ExperimentError(f"unknown pending step {step!r}")  # pragma: no cover

    def _note(self, exp_id: str, key: str, value: str) -> None:
        with self.db.transaction():
            flags = self._row(exp_id)["flags"]
            flags.setdefault(key, [])
            if value not in flags[key]:
                flags[key].append(value)
            self.db.conn.execute(
                "UPDATE experiments SET flags = ? WHERE id = ?", (json.dumps(flags), exp_id)
            )

    def _waiting(self, exp: dict[str, Any], step: str) -> None:
        kind = step.split(":", 1)[0]
        key = f"waiting_{kind}"
        if exp["flags"].get(key):
            return
        why = (
            "no rollout manager in this process; `edgeloop serve` starts the rollout"
            if kind == "rollout"
            else "no MQTT publisher in this process; `edgeloop serve` publishes it"
        )
        with self.db.transaction():
            flags = {**self._row(exp["id"])["flags"], key: True}
            self.db.conn.execute(
                "UPDATE experiments SET flags = ? WHERE id = ?", (json.dumps(flags), exp["id"])
            )
            message = f"{exp['id']}: {step} pending: {why}"
            self.db.add_event("ab_pending", message, subject=exp["id"])

    def _finish_if_done(self, exp: dict[str, Any]) -> None:
        exp_id, model = exp["id"], exp["model"]
        champ, chall = f"{model}@{exp['champion']}", f"{model}@{exp['challenger']}"
        if exp["state"] == "promoting" and "registry" not in exp["pending"]:
            state, kind = "promoted", "ab_promoted"
            message = f"{exp_id}: {chall} is now the champion of {model} (was {champ})"
        elif exp["state"] == "rolling_back" and not exp["pending"]:
            state, kind = "rolled_back", "ab_rolled_back"
            moved = [d for d in exp["devices"] if d not in exp["flags"].get("left_alone", [])]
            message = (
                f"{exp_id}: {', '.join(moved) or 'no device'} back on {champ} at 100%; "
                f"{chall} is no longer the challenger"
            )
            if exp["flags"].get("left_alone"):
                message += (
                    f" ({', '.join(exp['flags']['left_alone'])} left alone: their desired "
                    f"state changed during the experiment)"
                )
        else:
            return
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE experiments SET state = ?, ended_at = ?, updated_at = ? "
                "WHERE id = ? AND state = ?",
                (state, time.time(), time.time(), exp_id, exp["state"]),
            )
            if cur.rowcount == 1:
                self.db.add_event(kind, message, subject=exp_id, data={"model": model})
                log.info(message)

    # -- operator actions ----------------------------------------------------------

    def stop(self, exp_id: str, reason: str | None = None) -> dict[str, Any]:
        """End the experiment keeping the champion: every device back to it at 100 %."""
        exp = self._get(exp_id)
        if exp["state"] not in ACTIVE:
            raise ExperimentError(f"{exp_id} is {exp['state']}; only a running or decided "
                                  f"experiment can be stopped")  # fmt: skip
        why = f"Stopped by an operator: {reason or 'no reason given'}."
        decision = _operator_decision("rollback", why, exp["decision"])
        self._transition(exp, "rolling_back", decision, "ab_stopped", f"{exp_id}: {why}")
        self._act(exp_id, time.time(), force=True)
        return self.status(exp_id)[0]

    def promote(self, exp_id: str, *, force: bool = False) -> dict[str, Any]:
        """Promote the challenger now; without ``force`` only when the decision was promote."""
        exp = self._get(exp_id)
        if exp["state"] not in ACTIVE:
            raise ExperimentError(f"{exp_id} is {exp['state']}; only a running or decided "
                                  f"experiment can be promoted")  # fmt: skip
        recorded = exp["decision"]
        if not force:
            if exp["state"] == "running":
                raise ExperimentError(
                    f"{exp_id} has not reached a decision yet; promote anyway with --force"
                )
            if recorded and recorded.get("action") != "promote":
                raise ExperimentError(
                    f"{exp_id} was decided {recorded.get('action')!r}, not promote "
                    f"({recorded.get('reason')}); promote anyway with --force"
                )
        why = "Promoted by an operator" + (
            "." if recorded is None else f"; the experiment said: {recorded.get('reason')}"
        )
        decision = _operator_decision("promote", why, recorded)
        self._transition(exp, "promoting", decision, "ab_decision", f"{exp_id}: {why}")
        self._act(exp_id, time.time(), force=True)
        return self.status(exp_id)[0]

    def _transition(
        self, exp: dict[str, Any], state: str, decision: dict[str, Any], kind: str, message: str
    ) -> None:
        # A last look first, so the stored report is what the operator acted on.
        now = time.time()
        test, totals, ev, changed, _ = self._evaluate(exp, now)
        try:
            self._save(exp, now, test, totals, ev, changed, state=state, decision=decision,
                       pending=_steps(decision["action"], exp["devices"]), flags=exp["flags"],
                       events=[(kind, message)])  # fmt: skip
        except _Conflict:
            raise ExperimentError(
                f"{exp['id']} changed state meanwhile (now {self._row(exp['id'])['state']}); "
                f"check `edgeloop ab status {exp['id']}`"
            ) from None

    # -- reading -------------------------------------------------------------------

    def status(self, exp_id: str | None = None) -> list[dict[str, Any]]:
        """The report of one experiment (``exp_id``) or of all, oldest first.

        Running experiments are evaluated afresh on the telemetry stored so far (without
        writing anything, so this works while the daemon is down); ended ones show the report
        at their last look.
        """
        rows = [self._get(exp_id)] if exp_id is not None else self._rows()
        now = time.time()
        out = []
        for exp in rows:
            if exp["state"] in ACTIVE:
                test, _, ev, _, _ = self._evaluate(exp, now)
                report, evaluation = ev.report, {"action": ev.action, "reason": ev.reason}
            else:
                test = MixtureSPRT.from_dict(exp["test"])
                report = exp["report"] or {}
                evaluation = report.get("decision")
            out.append(
                {
                    **self._summary(exp),
                    "metric": test.metric,
                    "higher_is_better": test.higher_is_better,
                    "alpha": test.alpha,
                    "tau": test.tau,
                    "variants": report.get("variants"),
                    "difference": report.get("difference"),
                    "fixed_horizon": report.get("fixed_horizon"),
                    "sequential": report.get("sequential"),
                    "srm": report.get("srm"),
                    "guardrails": report.get("guardrails", []),
                    "evaluation": evaluation,
                    "looks": self.looks(exp["id"]),
                }
            )
        return out

    def looks(self, exp_id: str) -> list[dict[str, Any]]:
        """Every look that saw new counts, oldest first (what the demo report plots)."""
        rows = self.db.conn.execute(
            "SELECT seq, doc FROM experiment_looks WHERE experiment = ? ORDER BY seq", (exp_id,)
        ).fetchall()
        return [{"seq": r["seq"], **json.loads(r["doc"])} for r in rows]

    def running_for(self, model: str) -> list[dict[str, Any]]:
        """Experiments of ``model`` that still split traffic (running or awaiting a decision)."""
        return [self._summary(e) for e in self._rows() if e["model"] == model
                and e["state"] in ACTIVE]  # fmt: skip

    def devices_running(self, model: str) -> list[str]:
        """Devices whose desired state serves any version of ``model``."""
        return [
            device
            for device, doc in self.db.all_desired().items()
            if any(
                m.get("name") == model and m.get("role") == "serve" and (m.get("weight") or 0) > 0
                for m in doc.get("models", [])
            )
        ]

    def _summary(self, exp: dict[str, Any]) -> dict[str, Any]:
        model = exp["model"]
        return {
            "id": exp["id"],
            "model": model,
            "champion": f"{model}@{exp['champion']}",
            "challenger": f"{model}@{exp['challenger']}",
            "champion_version": exp["champion"],
            "challenger_version": exp["challenger"],
            "devices": exp["devices"],
            "weights": {"champion": 100.0 - exp["weight"], "challenger": exp["weight"]},
            "state": exp["state"],
            "kind": exp["kind"],
            "auto_decide": bool(exp["auto_decide"]),
            "cause": exp["cause"],
            "config": exp["config"],
            "created_at": exp["created_at"],
            "updated_at": exp["updated_at"],
            "ended_at": exp["ended_at"],
            "decision": exp["decision"],
            "pending": exp["pending"],
            "revisions": exp["revisions"],
            "rollout": exp["rollout"],
            "last_error": exp["last_error"],
        }

    def _get(self, exp_id: str) -> dict[str, Any]:
        try:
            return self._row(exp_id)
        except KeyError:
            raise ExperimentError(
                f"no experiment {exp_id!r}; `edgeloop ab status` lists them"
            ) from None

    def _row(self, exp_id: str) -> dict[str, Any]:
        row = self.db.conn.execute("SELECT * FROM experiments WHERE id = ?", (exp_id,)).fetchone()
        if row is None:
            raise KeyError(exp_id)
        return _decode(row)

    def _rows(self) -> list[dict[str, Any]]:
        rows = self.db.conn.execute("SELECT * FROM experiments ORDER BY created_at, id")
        return [_decode(r) for r in rows.fetchall()]


def _decode(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    out["auto_decide"] = bool(out["auto_decide"])
    return out


def _steps(action: str, devices: list[str]) -> list[str]:
    if action == "promote":
        return ["registry", "rollout"]
    return [f"desired:{d}" for d in devices] + ["registry"]


def _operator_decision(action: str, reason: str, recorded: dict[str, Any] | None) -> dict[str, Any]:
    return {"action": action, "reason": reason, "t": time.time(), "source": "operator",
            "recommended": recorded}  # fmt: skip


def _missing_arms(test: MixtureSPRT) -> str:
    arms = [a for a, s in (("the champion", test.champion), ("the challenger", test.challenger))
            if s.n == 0]  # fmt: skip
    return " or ".join(arms)


def _shadows(doc: dict[str, Any] | None, exclude: set[str]) -> list[_Entry]:
    """The shadows a device runs now, minus the experiment's own versions (kept as they are)."""
    if not doc:
        return []
    return [
        _Entry.from_entry(m)
        for m in doc.get("models", [])
        if m.get("role") == "shadow" and m.get("version") not in exclude
    ]


def _task(mv: Any, data: bytes) -> str:
    """classification or regression: from the registry metadata, else the ONNX metadata."""
    task = (mv.metadata or {}).get("task")
    if task in KIND_OF_TASK:
        return str(task)
    import onnx

    from edgeloop_agent.wire.modelmeta import META_KEY, ModelMeta, ModelMetaError

    try:
        model = onnx.load_model_from_string(data)
        raw = {p.key: p.value for p in model.metadata_props}.get(META_KEY)
        if raw is None:
            raise ModelMetaError(f"no {META_KEY!r} metadata")
        return ModelMeta.from_json(raw).task
    except Exception as exc:  # protobuf and metadata parsers raise assorted types
        raise ExperimentError(
            f"cannot tell whether {mv.ref} is a classifier or a regressor: {exc}"
        ) from None
