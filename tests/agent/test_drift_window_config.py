"""A count drift window smaller than the monitor's minimum sample is refused at start.

Found by tests/integration/test_loop_real_data.py: agents run with
``--drift-window 150`` reported every window with ``enough_data: false`` (the
monitor judges no window under ``DriftConfig.min_samples`` = 200 rows), so a debt
ratio multiplied by 100 was never flagged as data drift, without a word.
"""

from __future__ import annotations

import pytest

from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.drift import DriftConfig


def test_a_count_window_below_the_minimum_sample_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r"drift_window 150 is below the 200 rows"):
        AgentConfig(device_id="d1", broker="mqtt://b", drift_window=150).validate()


def test_the_minimum_itself_and_time_windows_are_accepted():
    AgentConfig(device_id="d1", broker="mqtt://b", drift_window=DriftConfig.min_samples).validate()
    AgentConfig(
        device_id="d1", broker="mqtt://b", drift_window=60, drift_window_kind="time"
    ).validate()
