"""What an experiment looks like to its readers: the dicts the CLI, the web UI, the report
and ``--json`` print. Shares are shown in percent, as operators write them.

Only formatting lives here; which numbers an experiment has is the store's and the
statistics' business.
"""

from __future__ import annotations

from typing import Any

from edgeloop_control.stats import MixtureSPRT

from .store import Experiment, StepKind


def summary(exp: Experiment) -> dict[str, Any]:
    """An experiment without its statistics (``start``, ``running_for``)."""
    weight = exp.weight_percent
    return {
        "id": exp.id,
        "model": exp.model,
        "champion": exp.champion_ref,
        "challenger": exp.challenger_ref,
        "champion_version": exp.champion,
        "challenger_version": exp.challenger,
        "devices": exp.devices,
        "skipped_offline": list(exp.flags.get("skipped_offline", [])),
        "weights": {"champion": 100.0 - weight, "challenger": weight},
        "state": exp.state,
        "kind": exp.kind,
        "auto_decide": exp.auto_decide,
        "cause": exp.cause,
        "config": exp.config.to_dict(),
        "created_at": exp.created_at,
        "updated_at": exp.updated_at,
        "ended_at": exp.ended_at,
        "decision": exp.decision,
        "pending": [str(s) for s in exp.pending],
        "revisions": exp.revisions,
        "rollout": exp.rollout,
        "last_error": exp.last_error,
    }


def status_entry(
    exp: Experiment,
    test: MixtureSPRT,
    report: dict[str, Any],
    evaluation: dict[str, Any] | None,
    looks: list[dict[str, Any]],
) -> dict[str, Any]:
    """One entry of ``status``: the summary, the test's settings and the latest report."""
    return {
        **summary(exp),
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
        "looks": looks,
    }


def start_message(exp: Experiment) -> str:
    weight = exp.weight_percent
    return (
        f"{exp.id}: A/B experiment {exp.champion_ref} ({100 - weight:g}%) vs "
        f"{exp.challenger_ref} ({weight:g}%) started on {', '.join(exp.devices)}"
        + (f" (cause: {exp.cause})" if exp.cause else "")
        + ("" if exp.auto_decide else "; decisions wait for an operator")
    )


def end_message(exp: Experiment) -> tuple[str, str, str] | None:
    """(final state, event kind, message) when ``exp``'s actions are done, else None."""
    if exp.state == "promoting" and not any(s.kind is StepKind.REGISTRY for s in exp.pending):
        return (
            "promoted",
            "ab_promoted",
            f"{exp.id}: {exp.challenger_ref} is now the champion of {exp.model} "
            f"(was {exp.champion_ref})",
        )
    if exp.state == "rolling_back" and not exp.pending:
        left_alone = list(exp.flags.get("left_alone", []))
        moved = [d for d in exp.devices if d not in left_alone]
        message = (
            f"{exp.id}: {', '.join(moved) or 'no device'} back on {exp.champion_ref} at 100%; "
            f"{exp.challenger_ref} is no longer the challenger"
        )
        if left_alone:
            message += (
                f" ({', '.join(left_alone)} left alone: their desired "
                f"state changed during the experiment)"
            )
        return "rolled_back", "ab_rolled_back", message
    return None
