"""One error hierarchy for the control node.

Every error whose message is fit to show a user (a bad flag, a missing model, a
broker that cannot be reached) derives from :class:`EdgeloopError`; the CLI
prints it as one line and exits non-zero. Anything else is a bug and keeps its
traceback. Subclasses keep their builtin bases (``ValueError``, ``LookupError``)
so callers that catch those still work.
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgeloopError(Exception):
    """A failure the user can act on; ``str(error)`` is the one line to print."""


class ConfigError(EdgeloopError, ValueError):
    """A setting (workspace file, flag, policy config) that cannot be used, named in the message."""


def reject_unknown_settings(data: Iterable[str], known: Iterable[str], source: str) -> None:
    """``ConfigError`` naming every setting of ``data`` that is not ``known`` (a typo in a
    config file must not be silently ignored), with the known ones listed."""
    known = sorted(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
