"""``smartfed report``: plots and a Markdown summary of a run directory (README, Using it)."""

from __future__ import annotations

from smartfed.report.markdown import ReportResult, render_markdown, write_report
from smartfed.report.run import RunRecord, load_run, parse_matrix_name

__all__ = [
    "ReportResult",
    "RunRecord",
    "load_run",
    "parse_matrix_name",
    "render_markdown",
    "write_report",
]
