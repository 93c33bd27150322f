"""`edgeloop demo`, the product's main job, runs unattended and writes its report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by packaging/install-system-deps.sh"
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        dom = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                report.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
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
