"""``hybridrft report`` and ``hybridrft analyze``: thin Typer commands over ``hybridrft.report`` (and,
for the two-model scoring of ``analyze shift``, ``hybridrft.eval``).

Registered in ``cli/main.py``::

    app.command(name="report")(report_command)
    app.add_typer(analyze_app, name="analyze")
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from hybridrft.cli.common import fail, setup_logging

console = Console(soft_wrap=True)

analyze_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Diagnostics from the SRFT paper: token-probability shift between two models, entropy over training.",
)


def report_command(
    runs: List[Path] = typer.Argument(..., help="one or more run folders (each with metrics.jsonl)"),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="folder for report.html and plots/ (default: the run folder for one run; for several, "
        "compare-<run>-vs-<run> next to the first run)",
    ),
    title: Optional[str] = typer.Option(None, help="page title (default: the runs' names)"),
):
    """Turn run folders into report.html (self-contained, opens from disk) plus PNG plots.

    Several runs are overlaid on the same axes so methods can be compared. Diagnostics written by
    `hybridrft analyze` into RUN/analysis/ (and OUTPUT/analysis/) are included."""
    from hybridrft.report import RunFolderError, write_report

    try:
        path = write_report(runs, output, title=title)
    except RunFolderError as err:
        fail(str(err))
    console.print(f"report: {path}")
    console.print(f"plots:  {path.parent / 'plots'}")


@analyze_app.command("shift")
def shift_command(
    base: str = typer.Argument(..., help="the model before tuning: hub id, folder, or smollm2-135m-instruct"),
    tuned: str = typer.Argument(..., help="the tuned model, e.g. RUN/final_model or RUN/checkpoints/step-N/model"),
    responses: Path = typer.Option(
        ..., "--responses", "-r",
        help="a run folder (its latest eval/generations-step-N.jsonl), such a file, a generations/NAME.jsonl "
        "of hybridrft eval, or a JSONL with 'prompt' and 'completion' fields",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="folder for the PNGs and shift.json (default: RUN/analysis for a run's responses, else "
        "analysis/ next to the responses file)",
    ),
    limit: int = typer.Option(64, help="score the first N responses"),
    example: int = typer.Option(0, help="which response (0-based) to colour token by token"),
    raw_prompts: bool = typer.Option(False, "--raw-prompts", help="'prompt' is the exact model input, not a problem to render with the chat template"),
    batch_size: int = typer.Option(8, help="sequences per forward pass"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
):
    """Token-probability shift between BASE and TUNED on the same responses (SRFT paper Fig. 2).

    Writes shift-histogram.png (per-token probability changes, log-scale counts), shift-tokens.png
    (one response coloured by the change), shift.json and shift-tokens.jsonl."""
    from hybridrft.eval import ResponsesError, token_shift, write_shift_data
    from hybridrft.eval.shift import run_dir_of
    from hybridrft.models import ModelNotFoundError
    from hybridrft.models.loading import DTYPES
    from hybridrft.report import RunFolderError, draw_shift

    setup_logging(verbose=False)
    if dtype not in DTYPES:
        fail(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if not responses.exists():
        fail(f"responses not found: {responses}")
    if output is None:
        if responses.is_dir():
            output = responses / "analysis"
        else:
            run_dir = run_dir_of(responses)
            output = (run_dir or responses.parent) / "analysis"
    try:
        result = token_shift(base, tuned, responses, limit=limit, raw_prompts=raw_prompts, batch_size=batch_size,
                             device=device, dtype=dtype)
        data = write_shift_data(result, output, example=example)
        written = [*draw_shift(output), *data]
    except ModelNotFoundError as err:
        fail(str(err))
    except (ResponsesError, RunFolderError) as err:
        fail(str(err))
    s = result.summary()
    console.print(
        f"{s['tokens']} completion tokens in {s['responses']} responses from {result.source}: "
        f"mean p {s['mean_p_base']:.4f} -> {s['mean_p_tuned']:.4f}, mean |dp| {s['mean_abs_delta']:.4f}, "
        f"|dp| < 0.01 for {s['share_abs_delta_below_0.01']:.1%} of tokens"
    )
    for path in written:
        console.print(f"wrote {path}")


@analyze_app.command("entropy")
def entropy_command(
    runs: List[Path] = typer.Argument(..., help="one or more run folders (each with metrics.jsonl)"),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="folder for entropy-dynamics.png (default: RUN/analysis for one run; for several, the "
        "analysis/ folder of the default `hybridrft report` output for the same runs)",
    ),
    smooth: int = typer.Option(1, help="moving average over N steps (1: raw curves)"),
):
    """Policy entropy over training (entropy/rollout and entropy/demo), several runs on one plot
    (SRFT paper Figs. 4-6)."""
    from hybridrft.report import RunFolderError, default_output_dir, load_runs, plot_entropy_dynamics

    try:
        loaded = load_runs(runs)
    except RunFolderError as err:
        fail(str(err))
    if output is None:
        output = default_output_dir(runs) / "analysis"
    path = plot_entropy_dynamics(loaded, output / "entropy-dynamics.png", smooth=max(smooth, 1))
    if path is None:
        fail("none of the runs logged entropy/rollout or entropy/demo in metrics.jsonl")
    console.print(f"wrote {path}")
