"""``hybridrft``: train, evaluate, and the quickstart. Thin: every command calls the library."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Post-train language models to reason with SFT + RL in one run (SRFT, SASR and baselines).",
)
console = Console()

QUICKSTART_RECIPE = Path(__file__).resolve().parents[1] / "config" / "recipes" / "quickstart.yaml"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    logging.getLogger("hybridrft").setLevel(logging.INFO)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _load(recipe: Optional[Path], overrides: List[str]):
    from hybridrft.config import ConfigError, load_config

    try:
        return load_config(recipe, overrides)
    except ConfigError as err:
        _fail(str(err))


def _run_training(config) -> "TrainResult":  # noqa: F821
    from hybridrft.models import ModelNotFoundError
    from hybridrft.train import Trainer

    try:
        trainer = Trainer(config)
    except (FileNotFoundError, FileExistsError, ModelNotFoundError, ValueError) as err:
        _fail(str(err))
    result = trainer.train()
    _write_plots(result.output_dir)
    return result


def _write_plots(run_dir: Path) -> None:
    from hybridrft.report import plot_run

    for path in plot_run(run_dir):
        console.print(f"plot: {path}")


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/srft_gsm8k.yaml", exists=True, dir_okay=False),
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=20 srft.rl_coef=0.2"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint in train.output_dir"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log more detail"),
):
    """Train with a recipe. Writes config.yaml, metrics.jsonl, checkpoints, plots and the final model
    into train.output_dir."""
    _setup_logging(verbose)
    config = _load(recipe, list(overrides or []) + (["train.resume=true"] if resume else []))
    result = _run_training(config)
    console.print(f"run folder: {result.output_dir}  final model: {result.final_model}")


@app.command()
def quickstart(
    overrides: Optional[List[str]] = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=4"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """SRFT on built-in arithmetic word problems with the embedded SmolLM2-135M-Instruct, on CPU.

    Measures held-out accuracy, trains, measures again, and prints a before/after table
    (about 10-15 minutes on 2 CPU cores). Same as `hybridrft train recipes/quickstart.yaml`."""
    _setup_logging(verbose)
    config = _load(QUICKSTART_RECIPE, ["train.overwrite=true", *(overrides or [])])
    console.print(
        f"quickstart: method={config.method} model={config.model.name_or_path} steps={config.train.max_steps} "
        f"prompts/step={config.train.prompts_per_step} rollouts/prompt={config.srft.num_generations} "
        f"held-out problems={config.eval.size}"
    )
    result = _run_training(config)
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


@app.command(name="eval")
def evaluate_model(
    model: str = typer.Argument(..., help="hub id, local model folder, run checkpoint, or smollm2-135m-instruct"),
    data: str = typer.Option(..., "--data", "-d", help="JSONL/Parquet file, datasets folder or hub id"),
    format: str = typer.Option("auto", help="auto | gsm8k | math | fields"),
    field: Optional[List[str]] = typer.Option(None, help="field mapping for --format fields, e.g. --field prompt=question"),
    limit: Optional[int] = typer.Option(None, help="evaluate the first N problems"),
    max_new_tokens: int = typer.Option(512, help="generation budget per problem"),
    batch_size: int = typer.Option(32, help="problems per generate() call"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="folder for results.json and generations.jsonl"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Greedy held-out accuracy of a model on a problem set, scored with the math reward."""
    _setup_logging(verbose)
    from rich.progress import Progress

    from hybridrft.config import DataConfig
    from hybridrft.data import load_examples
    from hybridrft.eval import evaluate
    from hybridrft.models import ModelNotFoundError, load_policy, load_tokenizer
    from hybridrft.rewards import get_reward
    from hybridrft.rollout import HFSampler, encode_prompts

    fields = dict(item.split("=", 1) for item in field or [])
    defaults = DataConfig()
    try:
        examples = load_examples(data, format=format, fields=fields or None, limit=limit)
        tokenizer = load_tokenizer(model)
        policy = load_policy(model).eval()
    except (FileNotFoundError, ModelNotFoundError, ValueError) as err:
        _fail(str(err))
    examples, prompt_ids = encode_prompts(
        tokenizer,
        examples,
        system_prompt=defaults.system_prompt,
        answer_instruction=defaults.answer_instruction,
        max_prompt_tokens=defaults.max_prompt_tokens,
        source=data,
    )
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("eval", total=len(examples))
        result = evaluate(
            HFSampler(policy, tokenizer, batch_size=batch_size),
            examples,
            prompt_ids,
            [("math", get_reward("math"), 1.0)],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            on_batch=lambda k: progress.advance(task, k),
        )
    table = Table(title=f"{model} on {data}")
    for column in ("problems", "accuracy", "mean response tokens", "truncated"):
        table.add_column(column, justify="right")
    table.add_row(str(result.num_examples), f"{result.accuracy:.1%}", f"{result.mean_length:.1f}", f"{result.truncated:.1%}")
    console.print(table)
    if output:
        output.mkdir(parents=True, exist_ok=True)
        summary = {"model": model, "data": data, **result.metrics("eval"), "num_examples": result.num_examples}
        (output / "results.json").write_text(json.dumps(summary, indent=2))
        with (output / "generations.jsonl").open("w") as f:
            for record in result.records:
                f.write(json.dumps(record) + "\n")
        console.print(f"wrote {output / 'results.json'} and {output / 'generations.jsonl'}")


if __name__ == "__main__":
    app()
