"""``tagseg report RUN_DIR``: a self-contained static HTML page about one run (per-class IoU,
confusion heatmaps, training curves, worst-first sample grid)."""

from tagseg.report.collect import RunContents, collect_run
from tagseg.report.html import render_report, write_report

__all__ = ["RunContents", "collect_run", "render_report", "write_report"]
