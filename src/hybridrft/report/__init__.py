"""Run folders to plots (PNG)."""

from hybridrft.report.plots import PANELS, plot_run

__all__ = ["PANELS", "plot_run"]
