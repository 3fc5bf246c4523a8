"""``hybridrft eval``: evaluate a model on benchmarks (built-in suites or your own files).

Thin: the options are parsed and the messages printed here; the work is in :mod:`hybridrft.eval`
(:mod:`hybridrft.eval.session`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from hybridrft.cli.common import fail, setup_logging

console = Console()

_FIELD_HELP = (
    "Column mapping, ROLE=COLUMN for every benchmark or BENCH.ROLE=COLUMN for one. Math roles: prompt, "
    "answer, id (custom benchmarks also demonstration; built-in suites also solution). Multiple-choice "
    "roles: question, choices (a list, or ARC's {text, label}), answer (a letter, label, index or the "
    "option text), answer_index, or correct plus incorrect=COL1,COL2,... (GPQA style). Mapping a "
    "multiple-choice role makes a custom benchmark multiple choice."
)


def _list_suites(value: bool) -> None:
    if not value:
        return
    from hybridrft.eval import SUITES

    console.print("[bold]built-in benchmark suites[/]: --suite NAME=PATH with your copy of the data, or --suite NAME "
                  "for the hub copy; map other column names with --field NAME.ROLE=COLUMN\n")
    for suite in SUITES.values():
        hub = suite.hub_id or "none"
        if suite.hub_id and suite.hub_config:
            hub += f", config {suite.hub_config}"
        if suite.hub_id:
            hub += f", split {suite.hub_split}"
        columns = "; ".join(f"{role}: {' | '.join(names)}" for role, names in suite.columns.items())
        console.print(
            f"[bold]{suite.name}[/] ({suite.title}, {suite.answer_type}; max new tokens {suite.max_new_tokens}; "
            f"usually {suite.usual_metrics})\n  columns  {columns}"
            + (f"\n  note     {suite.notes}" if suite.notes else "")
            + f"\n  hub      {hub}",
            highlight=False,
        )
    raise typer.Exit(0)


def evaluate_command(
    model: str = typer.Argument(
        ...,
        help="Model to evaluate: a hub id, a local model folder, a run folder (runs/x: its final_model, else the "
        "newest checkpoint), a checkpoint (runs/x/checkpoints/step-000010), or smollm2-135m-instruct.",
        show_default=False,
    ),
    suite: Optional[List[str]] = typer.Option(
        None,
        "--suite",
        "-s",
        help="A benchmark, repeatable: NAME=PATH (a .jsonl/.json/.parquet file, a datasets folder or a hub id) or "
        "NAME alone for a built-in suite's hub copy. Built-in: gsm8k, math500, aime24, amc23, minerva, "
        "olympiadbench, arc_c, gpqa, mmlu_pro (see --list-suites); any other NAME=PATH is your own benchmark.",
        show_default=False,
    ),
    data: Optional[str] = typer.Option(
        None, "--data", "-d", help="Same as --suite custom=DATA.", show_default=False
    ),
    format: str = typer.Option(
        "auto", "--format", help="Layout of custom math benchmarks: auto | gsm8k | math | fields."
    ),
    field: Optional[List[str]] = typer.Option(None, "--field", "-f", help=_FIELD_HELP, show_default=False),
    split: Optional[str] = typer.Option(
        None, "--split", help="Split of hub / datasets sources [default: the suite's, else test].", show_default=False
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, help="Evaluate the first N problems of each benchmark.", show_default=False
    ),
    samples: int = typer.Option(
        1, "--samples", "-n", min=1, help="Completions per problem; more than 1 reports avg@n and pass@k."
    ),
    temperature: Optional[float] = typer.Option(
        None,
        "--temperature",
        "-t",
        min=0.0,
        help="Sampling temperature; 0 is greedy [default: 0 for one sample, 0.6 for several].",
        show_default=False,
    ),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling threshold."),
    pass_k: Optional[str] = typer.Option(
        None,
        "--pass-k",
        help="Comma-separated k for unbiased pass@k, each at most --samples, e.g. 1,4,8 "
        "[default: powers of two up to --samples, and --samples].",
        show_default=False,
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None,
        "--max-new-tokens",
        min=1,
        help="Generation budget per completion [default: the suite's; 1024 for custom benchmarks].",
        show_default=False,
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Sequences per generate() call."),
    max_prompt_tokens: int = typer.Option(
        2048, "--max-prompt-tokens", min=1, help="Longer prompts are skipped and counted."
    ),
    system_prompt: Optional[str] = typer.Option(
        None, "--system-prompt", help="System message before every problem.", show_default=False
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the option order and of sampling."),
    correct_threshold: float = typer.Option(
        1.0, "--correct-threshold", help="A completion whose score is at least this counts as correct (reward.correct_threshold)."
    ),
    shuffle_options: bool = typer.Option(
        True, "--shuffle-options/--keep-option-order", help="Multiple choice: show the options in a seeded shuffled order."
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Folder for results.json, results.md and generations/<benchmark>.jsonl; an existing one is resumed "
        "[default: evals/<model>].",
        show_default=False,
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard the generations of these benchmarks in --output instead of resuming."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16 | float16."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    backend: str = typer.Option(
        "native", "--backend",
        help="Sampler: native (shared prompt pass) | hf (transformers generate) | vllm (a vLLM engine; needs vllm installed).",
    ),
    list_suites: bool = typer.Option(
        False, "--list-suites", is_eager=True, callback=_list_suites, help="List the built-in suites and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail."),
):
    """Evaluate a model on benchmarks: pass@1 (greedy), or avg@n and pass@k over n samples.

    Writes results.json, results.md and every generation with its score (generations/NAME.jsonl).

    Run the same command again to resume: generations already written are not made again.

    Example: hybridrft eval runs/srft/final_model --suite gsm8k=test.jsonl --suite math500=math500.parquet

    Example: hybridrft eval runs/srft --suite aime24=aime24.jsonl --samples 32 --pass-k 1,8,32

    Example: hybridrft eval smollm2-135m-instruct --suite mine=q.jsonl --field prompt=q --field answer=a
    """
    setup_logging(verbose)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from hybridrft.eval import BenchmarkError, ProgressHooks, results_table
    from hybridrft.eval.session import (EvalOptions, context_length, generations_folder, load_model, plan_evaluation,
                                        run_evaluation)
    from hybridrft.models import ModelNotFoundError

    options = EvalOptions(
        model=model, suites=suite or [], data=data, format=format, fields=field or [], split=split, limit=limit,
        samples=samples, temperature=temperature, top_p=top_p, pass_k=pass_k, max_new_tokens=max_new_tokens,
        batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, system_prompt=system_prompt, seed=seed,
        correct_threshold=correct_threshold, shuffle_options=shuffle_options, output=output, overwrite=overwrite,
        dtype=dtype, device=device, backend=backend,
    )
    try:
        plan = plan_evaluation(options)
    except ValueError as error:  # BenchmarkError included: a bad option, --suite, --field, file or column
        fail(str(error))
    try:
        loaded = load_model(model, device=device, dtype=dtype, batch_size=batch_size, backend=backend,
                            max_model_len=context_length(plan))
    except (ModelNotFoundError, OSError, ValueError, ImportError) as error:
        fail(str(error))
    console.print(
        f"evaluating {model}" + (f" ({loaded.path})" if loaded.path != model else "")
        + f" on {', '.join(b.name for b in plan.benchmarks)}: {samples} sample(s) per problem, "
        + ("greedy" if plan.temperature == 0 else f"temperature {plan.temperature}") + f"; output in {plan.output}",
        highlight=False,
    )

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True),
    )
    with progress:
        task = {"id": None}

        def start(name: str, total: int, done: int) -> None:
            task["id"] = progress.add_task(name, total=total, completed=done)

        hooks = ProgressHooks(start=start, advance=lambda k: progress.advance(task["id"], k))
        try:
            outcome = run_evaluation(plan, loaded, hooks)
        except BenchmarkError as error:
            fail(str(error))
        except KeyboardInterrupt:
            progress.stop()
            console.print(
                f"interrupted; the generations so far are in {generations_folder(plan)}; run the same command "
                "again to resume"
            )
            raise typer.Exit(130)
    console.print(results_table(outcome.results, title=f"{model}: metrics in %"))
    if outcome.reused:
        console.print(f"resumed: {outcome.reused} generation(s) read back, {outcome.generated} new")
    console.print(f"wrote {outcome.results_json}, {outcome.results_md} and {generations_folder(plan)}/", highlight=False)
