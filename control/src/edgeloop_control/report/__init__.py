"""The demo's HTML report: drift, the A/B experiment, the rollout and the events on one page.

``render_report(data) -> str`` returns one self-contained document (inline CSS and SVG
charts, no script, nothing fetched); ``write_report(data, path)`` writes it. The input
contract and how to read each chart are in ``docs/report.md``.
"""

from .page import render_report
from .validate import ReportDataError, parse_report
from .write import write_report

__all__ = ["ReportDataError", "parse_report", "render_report", "write_report"]
