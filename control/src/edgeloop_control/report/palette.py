"""Colours: one per series, fixed meanings for states, and the PSI heat ramp.

Series colours avoid red, which is kept for alarms (drift flags, failures, rollbacks), so
a red mark always means something went wrong.
"""

from __future__ import annotations

import itertools

SERIES = (
    "#1f6fb4",  # blue
    "#e08214",  # orange
    "#2a9d4b",  # green
    "#7b4fb0",  # purple
    "#138d9c",  # teal
    "#8c564b",  # brown
    "#d45fb0",  # pink
    "#9a9a2a",  # olive
    "#5a5a5a",  # grey
)
ALARM = "#d62728"
THRESHOLD = "#b2182b"
MARKER = "#444444"
ZERO = "#777777"
CHAMPION = "#1f6fb4"
CHALLENGER = "#e08214"
ESTIMATE = "#7b4fb0"
P_SEQUENTIAL = "#7b4fb0"
P_FIXED = "#9a9a9a"

# Tones are CSS classes as well as SVG fills; unknown states fall back to "other".
TONES = {
    "passed": "#2a9d4b",
    "completed": "#2a9d4b",
    "promote": "#2a9d4b",
    "failed": "#d62728",
    "rolled_back": "#d62728",
    "rollback": "#d62728",
    "running": "#1f6fb4",
    "continue": "#1f6fb4",
    "pending": "#b0b0b0",
    "warn": "#e08214",
    "other": "#8a8a8a",
}


def series_color(i: int) -> str:
    return SERIES[i % len(SERIES)]


def tone(state: str) -> str:
    """The CSS class for a state; user-supplied states never become class names."""
    return state if state in TONES else "other"


def tone_color(state: str) -> str:
    return TONES[tone(state)]


# PSI heat ramp by multiples of the threshold: pale below it, red above, dark at 4x.
_HEAT = (
    (0.0, (255, 255, 255)),
    (0.5, (254, 232, 200)),
    (1.0, (252, 141, 89)),
    (2.0, (215, 48, 31)),
    (4.0, (127, 0, 0)),
)


def heat(psi: float, threshold: float) -> tuple[str, str]:
    """(background, text colour) for a PSI cell."""
    ratio = max(0.0, psi / threshold)
    lo_stop, hi_stop = _HEAT[0], _HEAT[-1]
    for a, b in itertools.pairwise(_HEAT):
        if ratio <= b[0]:
            lo_stop, hi_stop = a, b
            break
    else:
        lo_stop = hi_stop
    span = hi_stop[0] - lo_stop[0]
    f = 0.0 if span == 0 else (min(ratio, hi_stop[0]) - lo_stop[0]) / span
    rgb = [round(x + (y - x) * f) for x, y in zip(lo_stop[1], hi_stop[1], strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#ffffff" if ratio >= 1.6 else "#1a1a1a")
