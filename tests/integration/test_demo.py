"""`edgeloop demo`, the product's main job, runs unattended and writes its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.chromium import run_chromium

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")


def test_demo_runs_the_whole_loop_and_its_report_renders(tmp_path: Path):
    report = tmp_path / "report.html"
    out = subprocess.run(
        [EDGELOOP, "demo", "--workdir", str(tmp_path / "demo"), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    for milestone in (
        "drift_detected",
        "registered sensor@v2",
        "ab_started",
        "Promoting",
        "rollout_completed",
        "demo finished",
    ):
        assert milestone in out.stdout, f"{milestone!r} missing from the narration"
    html = report.read_text()
    assert "http://" not in html and "https://" not in html

    dom = run_chromium(["--dump-dom", report.as_uri()], tmp_path)
    # Drift per feature, the A/B metric with its confidence sequence, the rollout timeline.
    for chart in (
        'id="drift-chart-vibration_mm_s"',
        'id="drift-chart-bearing_temp_c"',
        'id="ab-metric-chart"',
        'id="ab-cs-chart"',
        'id="ab-pvalue-chart"',
        'id="rollout-chart"',
    ):
        assert chart in dom, f"{chart} not rendered"
    assert dom.count("<polyline") + dom.count("<path") > 20
    # The demo's requests are keyed by sensor: the A/B sample ratio is checked on keys.
    assert " on keys " in dom, "the SRM line does not name keys as its unit"
