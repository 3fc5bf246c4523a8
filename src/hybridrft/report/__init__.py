"""Run folders to plots (PNG) and a self-contained HTML report; the SRFT paper's diagnostics."""

from hybridrft.report.entropy import plot_entropy_dynamics
from hybridrft.report.html import default_output_dir, write_report
from hybridrft.report.plots import PANELS, plot_run, plot_runs
from hybridrft.report.runs import RunData, RunFolderError, load_run, load_runs, read_jsonl
from hybridrft.report.shift import (
    ResponsesError,
    ShiftResult,
    TokenShift,
    completion_token_probs,
    load_responses,
    token_shift,
    write_shift,
)

__all__ = [
    "PANELS",
    "ResponsesError",
    "RunData",
    "RunFolderError",
    "ShiftResult",
    "TokenShift",
    "completion_token_probs",
    "default_output_dir",
    "load_responses",
    "load_run",
    "load_runs",
    "plot_entropy_dynamics",
    "plot_run",
    "plot_runs",
    "read_jsonl",
    "token_shift",
    "write_report",
    "write_shift",
]
