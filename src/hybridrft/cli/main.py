"""``hybridrft``: train, evaluate, and the quickstart. Thin: every command calls the library."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hybridrft.cli.common import fail, setup_logging
from hybridrft.cli.eval_cmd import evaluate_command
from hybridrft.cli.report_cmd import analyze_app, report_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Post-train language models to reason with SFT + RL in one run (SRFT, SASR and baselines): "
    "train, evaluate, report.",
)
console = Console()

QUICKSTART_RECIPE = Path(__file__).resolve().parents[1] / "config" / "recipes" / "quickstart.yaml"


def _load(recipe: Optional[Path], overrides: List[str]):
    from hybridrft.config import ConfigError, load_config

    try:
        return load_config(recipe, overrides)
    except ConfigError as err:
        fail(str(err))


def _run_training(config) -> tuple["TrainResult", bool]:  # noqa: F821
    """The run, and whether it ran as several processes (their group ended here, on every process)."""
    from hybridrft.models import ModelNotFoundError
    from hybridrft.train import (STOPPED_EXIT_CODE, CheckpointError, CheckpointWriteError, NonFiniteTrainingError,
                                 RunFolderError, Trainer, TrainingStopped)

    try:
        trainer = Trainer(config)
    except (FileNotFoundError, FileExistsError, ModelNotFoundError, ValueError, CheckpointError, RunFolderError) as err:
        fail(str(err))
    try:
        result = trainer.train()
    except (NonFiniteTrainingError, CheckpointWriteError) as err:
        fail(str(err))
    except TrainingStopped as stopped:
        several = _end_process_group(trainer)
        Console(stderr=True, soft_wrap=True).print(f"[bold yellow]stopped:[/] {escape(str(stopped))}", highlight=False)
        if several:
            _exit_without_teardown(STOPPED_EXIT_CODE)
        raise typer.Exit(STOPPED_EXIT_CODE)
    several = _end_process_group(trainer)
    if not result.is_main_process:  # rank 0 writes the report
        return result, several
    from hybridrft.report import write_report

    console.print(f"report: {write_report([result.output_dir])} (plots in {result.output_dir / 'plots'})")
    return result, several


def _end_process_group(trainer) -> bool:
    """Every process leaves the process group together before this one exits; True where there was a
    group to leave (several processes). A group left to the interpreter's exit is torn down in whatever
    order static destructors run, and a gloo worker thread still joinable then aborts the process
    ("terminate called without an active exception") after a run that finished."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():  # not already ended by end_training
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.state.destroy_process_group()
        return True
    return False


def _exit_without_teardown(code: int) -> None:
    """Leave a process of a multi-process run once everything is written: the exit handlers run and
    the streams are flushed while the interpreter is whole, and the interpreter is then not torn down.
    Ending the process group is not enough on its own: torch.distributed's C++ threads can outlive it
    and reach for the GIL while the interpreter finalizes, which aborts a process whose run finished
    (rarely: about one FSDP2 launch in tens here), and the launcher then reports the run as failed."""
    import atexit
    import logging
    import os
    import sys

    atexit._run_exitfuncs()  # the reward workers' pool, trackers: what a normal exit would run
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/srft_gsm8k.yaml", exists=True, dir_okay=False),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=20 srft.rl_coef=0.2"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in train.output_dir"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log more detail"),
):
    """Train with a recipe. Writes config.yaml, metrics.jsonl, checkpoints, the final model, plots
    and report.html into train.output_dir.

    On several devices: accelerate launch --config_file recipes/accelerate/ddp.yaml -m hybridrft train RECIPE
    (train.prompts_per_step is the global batch; FSDP2 and ZeRO configs: docs/scaling.md).

    One run per folder: a fresh run needs an empty train.output_dir (or train.overwrite=true).

    SIGTERM or Ctrl-C checkpoints the last finished step and exits with code 75; a second one stops at once."""
    setup_logging(verbose)
    config = _load(recipe, list(overrides or []) + (["train.resume=true"] if resume else []))
    result, several = _run_training(config)
    if result.is_main_process:
        console.print(f"run folder: {result.output_dir}  final model: {result.final_model}")
    if several:
        _exit_without_teardown(0)


@app.command()
def quickstart(
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=4"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log more detail"),
):
    """SRFT on built-in arithmetic word problems with the embedded SmolLM2-135M-Instruct, on CPU.

    Measures held-out accuracy, trains 16 steps, measures again, and prints a before/after table
    (5 to 10 minutes on 2 CPU cores). The training is `hybridrft train recipes/quickstart.yaml
    train.overwrite=true`; the run folder is runs/quickstart."""
    setup_logging(verbose)
    config = _load(QUICKSTART_RECIPE, ["train.overwrite=true", *(overrides or [])])
    console.print(
        f"quickstart: method={config.method} model={config.model.name_or_path} steps={config.train.max_steps} "
        f"prompts/step={config.train.prompts_per_step} rollouts/prompt={config.group.num_generations} "
        f"held-out problems={config.eval.size}"
    )
    result, _ = _run_training(config)
    steps = sorted(result.evals)
    if len(steps) < 2:
        return
    before, after = result.evals[steps[0]], result.evals[steps[-1]]
    table = Table(title=f"held-out accuracy, {before.num_examples} arithmetic word problems (greedy)")
    for column in ("", f"before (step {steps[0]})", f"after (step {steps[-1]})", "change"):
        table.add_column(column, justify="right")
    for label, a, b, fmt, change_fmt in (
        ("accuracy", before.accuracy, after.accuracy, "{:.1%}", "{:+.1f} pts"),
        ("mean reward", before.mean_reward, after.mean_reward, "{:.3f}", "{:+.3f}"),
        ("response tokens", before.mean_length, after.mean_length, "{:.1f}", "{:+.1f}"),
        ("truncated", before.truncated, after.truncated, "{:.1%}", "{:+.1f} pts"),
    ):
        change = (b - a) * 100 if "pts" in change_fmt else b - a
        table.add_row(label, fmt.format(a), fmt.format(b), change_fmt.format(change))
    console.print(table)
    console.print(f"run folder: {result.output_dir}  final model: {result.final_model}")


app.command(name="eval")(evaluate_command)
app.command(name="report")(report_command)
app.add_typer(analyze_app, name="analyze")


if __name__ == "__main__":
    app()
