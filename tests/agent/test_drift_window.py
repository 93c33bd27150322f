"""Window configuration and the pane ring, against brute-force sums of the raw slots."""

from __future__ import annotations

import numpy as np
import pytest

from edgeloop_agent.drift import WindowConfig
from edgeloop_agent.drift.window import MAX_PANES, PaneRing


def test_defaults_and_derived_sizes() -> None:
    w = WindowConfig()
    assert (w.kind, w.size, w.slide, w.n_panes, w.tumbling) == ("count", 1000, None, 1, True)
    s = WindowConfig("time", 3600, 600)
    assert s.n_panes == 6 and s.pane_size == 600 and not s.tumbling
    assert WindowConfig("time", 0.3, 0.1).n_panes == 3  # float multiples are accepted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "rows"}, "window.kind"),
        ({"size": 0}, "window.size"),
        ({"size": float("nan")}, "window.size"),
        ({"size": True}, "window.size"),
        ({"size": 100, "slide": 0}, "window.slide"),
        ({"size": 100, "slide": 200}, "must not exceed"),
        ({"size": 100, "slide": 30}, "whole multiple"),
        ({"size": 10.5}, "whole rows"),
        ({"size": 10 * (MAX_PANES + 1), "slide": 10}, "exceeds the limit"),
    ],
)
def test_rejects_bad_window_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowConfig(**kwargs)


def test_ring_window_is_the_sum_of_the_last_panes() -> None:
    rng = np.random.default_rng(0)
    n_panes, n_slots = 4, 13
    ring = PaneRing(n_panes, n_slots)
    history: list[np.ndarray] = []
    for _ in range(30):
        added = [np.zeros(0, np.int64)]
        for _ in range(int(rng.integers(0, 5))):
            n_rows = int(rng.integers(1, 4))
            if n_rows == 1:
                slots = rng.choice(n_slots, size=3, replace=False)  # one row: unique ids
            else:
                slots = rng.integers(0, n_slots, size=3 * n_rows)
            ring.add(slots, n_rows)
            added.append(slots)
        ring.close()
        history.append(np.bincount(np.concatenate(added), minlength=n_slots))
        np.testing.assert_array_equal(ring.window, np.sum(history[-n_panes:], axis=0))
    ring.clear()
    assert ring.window.sum() == 0 and ring.window_rows == 0
