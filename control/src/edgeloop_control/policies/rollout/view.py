"""A rollout's status in the shape of the HTML report's ``rollout`` section (docs/report.md)."""

from __future__ import annotations

from typing import Any

# Batch states (RolloutManager.status) -> the report's batch results.
_RESULT = {
    "passed": "passed",
    "failed": "failed",
    "checking": "running",
    "publishing": "running",
    "waiting": "pending",
}


def report_view(status: dict[str, Any]) -> dict[str, Any]:
    """``RolloutManager.status(id)[0]`` -> ``{"model", "state", "previous", "batches"}``."""
    batches = []
    for b in status["batches"]:
        index = int(b["number"]) - 1
        failed = b["state"] == "failed"
        batches.append(
            {
                "index": index,
                "label": "canary" if index == 0 else f"step {index}",
                "devices": [d["device"] for d in b["devices"]],
                # skipped (never reached) and stopped (aborted mid-batch) pass through.
                "result": _RESULT.get(b["state"], b["state"]),
                "started": b["published_at"] or b["started_at"],
                "finished": b["passed_at"] or b["failed_at"],
                "reason": status.get("failure") if failed else None,
            }
        )
    previous = status.get("previous_models") or []
    return {
        "model": status["model"],
        "state": status["state"],
        "previous": ", ".join(previous) or None,
        "batches": batches,
    }
