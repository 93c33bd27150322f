"""The time/device/model filters shared by ``edgeloop report`` and ``edgeloop drift``."""

from __future__ import annotations

from edgeloop_agent.wire.names import InvalidName, check_device_id, check_model_name
from edgeloop_control.cli.common import fail
from edgeloop_control.report.history import Selection, parse_when


def selection(
    since: str | None,
    until: str | None,
    devices: list[str] | None,
    models: list[str] | None,
) -> Selection:
    """The options as a :class:`Selection`; a bad value exits with one line naming it."""
    try:
        for d in devices or []:
            check_device_id(d)
        for m in models or []:
            name, _, version = m.partition("@")
            check_model_name("model name", name)
            if version or m.endswith("@"):
                check_model_name("model version", version)
        return Selection(
            since=parse_when(since, option="--since") if since is not None else None,
            until=parse_when(until, option="--until") if until is not None else None,
            devices=tuple(dict.fromkeys(devices or [])),
            models=tuple(dict.fromkeys(models or [])),
        )
    except InvalidName as exc:  # an agent-side error: not an EdgeloopError
        fail(str(exc))
