"""Looking at a running experiment and recording what the look decided.

A look folds new telemetry into copies of the stored test and totals, evaluates them and,
in one transaction, stores the result if the experiment is still in the state the look
started from (a compare-and-set: a CLI ``stop`` and the daemon's tick never both decide).
Leaving the running states releases the experiment's devices in that same transaction, so
the desired-state owner never sees an experiment that has decided but still holds them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from edgeloop_agent.wire.topics import Topics
from edgeloop_control.stats import MixtureSPRT

from .config import ExperimentError
from .estimated import estimated_arms
from .evaluate import (
    Evaluation,
    evaluate,
    guardrails,
    labels_missing,
    look_record,
    update_test,
)
from .parts import Parts, owner
from .store import ACTIVE, Experiment, Step, steps_for
from .totals import Totals, output_windows

log = logging.getLogger("edgeloop.control.experiments")


class Conflict(Exception):
    """The experiment's state changed under us (another process acted first)."""


@dataclass
class Look:
    """One evaluation of an experiment on the telemetry stored so far (nothing written)."""

    test: MixtureSPRT
    totals: Totals
    ev: Evaluation
    changed: bool  # new labelled or served counts: worth a row in experiment_looks
    cursor_moved: bool  # new telemetry rows were read, even if they changed no count


@dataclass
class Outcome:
    """What a look or an operator action does to the experiment."""

    state: str
    decision: dict[str, Any] | None
    pending: list[Step]
    flags: dict[str, Any]
    events: list[tuple[str, str]] = field(default_factory=list)


def take_look(parts: Parts, exp: Experiment, now: float) -> Look:
    """Fold new telemetry into copies of the stored state and evaluate (no writes)."""
    test = MixtureSPRT.from_dict(exp.test)
    totals = Totals.from_dict(exp.totals)
    before, cursor = totals.counts(), totals.cursor
    variants = {exp.champion_ref: "champion", exp.challenger_ref: "challenger"}
    totals.advance(parts.db, exp.id, variants, exp.devices)
    update_test(test, totals)
    windows = output_windows(
        parts.db, exp.champion_ref, exp.challenger_ref, exp.devices, totals.drift_since
    )
    estimated = None
    if exp.config.max_estimated_gap is not None:
        estimated = estimated_arms(
            parts.db, exp.champion_ref, exp.challenger_ref, exp.devices, totals.drift_since
        )
    ev = evaluate(
        test,
        totals,
        weight=exp.weight_percent,
        config=exp.config,
        checks=guardrails(exp.config, totals.challenger, windows, estimated),
        started_at=exp.created_at,
        now=now,
    )
    return Look(test, totals, ev, totals.counts() != before, totals.cursor != cursor)


def _missing_arms(test: MixtureSPRT) -> str:
    arms = [a for a, s in (("the champion", test.champion), ("the challenger", test.challenger))
            if s.n == 0]  # fmt: skip
    return " or ".join(arms)


def _decided(exp: Experiment, ev: Evaluation, now: float) -> Outcome:
    decision = {"action": ev.action, "reason": ev.reason, "t": now, "source": ev.source}
    if exp.auto_decide:
        state = "promoting" if ev.action == "promote" else "rolling_back"
        return Outcome(state, decision, steps_for(ev.action, exp.devices), dict(exp.flags),
                       [("ab_decision", f"{exp.id}: {ev.reason}")])  # fmt: skip
    message = (
        f"{exp.id}: {ev.reason} Awaiting an operator: `edgeloop ab promote {exp.id}` or "
        f"`edgeloop ab stop {exp.id}`."
    )
    return Outcome("decided", decision, exp.pending, dict(exp.flags), [("ab_decision", message)])


def _notices(parts: Parts, exp: Experiment, lk: Look) -> Outcome:
    """No decision yet: say once that labels are missing, or that the test needs review."""
    out = Outcome(exp.state, exp.decision, exp.pending, dict(exp.flags))
    served = lk.totals.champion.requests + lk.totals.challenger.requests
    if labels_missing(lk.test) and served and not out.flags.get("labels_missing"):
        out.flags["labels_missing"] = True
        out.events.append(
            (
                "ab_waiting_for_labels",
                f"{exp.id}: {served} requests served but no labelled outcomes yet for "
                f"{_missing_arms(lk.test)}; the experiment cannot decide without labels "
                f"(feedback on {Topics.every_device('feedback', parts.prefix)}). "
                "Guardrails still apply.",
            )
        )
    if lk.ev.report["sequential"]["confidence_sequence_empty"] and not out.flags.get("review"):
        out.flags["review"] = True
        out.events.append(("ab_needs_review", f"{exp.id}: {lk.ev.reason}"))
    return out


def look(parts: Parts, exp_id: str, now: float) -> None:
    """Evaluate a running (or decided) experiment and store what changed."""
    exp = parts.store.get(exp_id)
    lk = take_look(parts, exp, now)
    if exp.state == "running" and lk.ev.action != "continue":
        out = _decided(exp, lk.ev, now)
    elif lk.ev.action == "continue":
        out = _notices(parts, exp, lk)
    else:
        out = Outcome(exp.state, exp.decision, exp.pending, dict(exp.flags))
    if not (lk.changed or lk.cursor_moved or out.events or out.state != exp.state):
        return  # nothing new: an idempotent tick writes nothing
    try:
        save(parts, exp, now, lk, out)
    except Conflict:
        log.info("%s changed state while it was evaluated; skipping this look", exp_id)


def save(parts: Parts, exp: Experiment, now: float, lk: Look, out: Outcome) -> None:
    """Store a look and its consequences in one transaction, if the state is still the
    one the look started from (else :class:`Conflict`: another process acted first)."""
    with parts.db.transaction() as conn:
        stored = parts.store.save_look(
            conn, exp, now, test=lk.test.to_dict(), totals=lk.totals.to_dict(),
            report=lk.ev.report, state=out.state, decision=out.decision, pending=out.pending,
            flags=out.flags,
        )  # fmt: skip
        if not stored:
            raise Conflict
        if exp.state in ACTIVE and out.state not in ACTIVE:
            # Decided: traffic is no longer split by this experiment's choice. Rollback steps
            # still write these devices, but only while nobody else has taken them.
            parts.desired.release(owner(exp.id), conn=conn)
        if lk.changed:
            parts.store.add_look(conn, exp.id, now, look_record(lk.ev.report, now, lk.ev.action))
        for kind, message in out.events:
            parts.db.add_event(
                kind,
                message,
                subject=exp.id,
                data={"model": exp.model, "decision": out.decision, "state": out.state},
            )
    for _, message in out.events:
        log.info(message)


def operator_decision(action: str, reason: str, recorded: dict[str, Any] | None) -> dict[str, Any]:
    return {"action": action, "reason": reason, "t": time.time(), "source": "operator",
            "recommended": recorded}  # fmt: skip


def transition(
    parts: Parts, exp: Experiment, state: str, decision: dict[str, Any], kind: str, message: str
) -> None:
    """An operator's decision: a last look first, so the stored report is what they acted on."""
    now = time.time()
    lk = take_look(parts, exp, now)
    out = Outcome(state, decision, steps_for(decision["action"], exp.devices), exp.flags,
                  [(kind, message)])  # fmt: skip
    try:
        save(parts, exp, now, lk, out)
    except Conflict:
        raise ExperimentError(
            f"{exp.id} changed state meanwhile (now {parts.store.get(exp.id).state}); "
            f"check `edgeloop ab status {exp.id}`"
        ) from None
