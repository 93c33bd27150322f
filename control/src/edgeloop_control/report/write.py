"""Write the report file atomically, so a browser never opens half a page."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .page import render_report


def write_report(data: Mapping[str, Any], path: Path | str) -> Path:
    """Render ``data`` and write it to ``path`` (parents created); returns the absolute path.

    The data is validated and rendered before anything touches the disk, so a bad input
    leaves an earlier report in place.
    """
    document = render_report(data)
    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(document)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be opened and shared
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
