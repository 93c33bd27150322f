"""``edgeloop report`` on a real workspace: a week of drift, two experiments, two rollouts.

The history is written through the real modules (see ``fleet_history.py``); the page is
checked for content with the stdlib HTML parser and rendered once in headless Chromium.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_control.broker import PrivateBroker
from edgeloop_control.controldb import ControlDB
from edgeloop_control.history import Selection
from edgeloop_control.report import render_report
from edgeloop_control.report.collect import collect_report
from edgeloop_control.workspace import Workspace
from tests.control.fleet_history import (
    CATEGORICAL,
    DEVICES,
    LONG_DEVICE,
    LONG_FEATURES,
    MODEL_FEATURES,
    History,
    build,
)
from tests.control.test_report_render import Page, assert_self_contained


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    root = tmp_path_factory.mktemp("fleet-history")
    broker = PrivateBroker(root / "broker").start()
    try:
        yield build(root, broker)
    finally:
        broker.stop()


def test_history_builds(history: History) -> None:
    assert len(history.experiments) == 2 and len(history.rollouts) == 2
    assert history.windows > 40
