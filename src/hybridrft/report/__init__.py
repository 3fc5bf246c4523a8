"""Run folders to plots (PNG) and a self-contained HTML report; the SRFT paper's diagnostics drawn
from what ``hybridrft analyze`` computed (the scoring itself is in ``hybridrft.eval``)."""

from hybridrft.report.entropy import plot_entropy_dynamics
from hybridrft.report.html import default_output_dir, write_report
from hybridrft.report.plots import PANELS, plot_run, plot_runs
from hybridrft.report.runs import RunData, RunFolderError, load_run, load_runs, read_jsonl
from hybridrft.report.shift import draw_shift, plot_shift_histogram, plot_token_colours, read_shift

__all__ = [
    "PANELS",
    "RunData",
    "RunFolderError",
    "default_output_dir",
    "draw_shift",
    "load_run",
    "load_runs",
    "plot_entropy_dynamics",
    "plot_run",
    "plot_runs",
    "plot_shift_histogram",
    "plot_token_colours",
    "read_jsonl",
    "read_shift",
    "write_report",
]
