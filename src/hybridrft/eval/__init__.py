"""Evaluation: held-out accuracy for the trainer, and the benchmark runner behind `hybridrft eval`
(built-in suites, multiple choice, avg@k and unbiased pass@k, resumable generation files)."""

from hybridrft.eval.accuracy import EvalResult, evaluate
from hybridrft.eval.choice import CHOICE_INSTRUCTION, ChoiceQuestion, arrange_options, choice_prompt, option_permutation
from hybridrft.eval.metrics import (
    avg_at_k,
    default_pass_ks,
    mean_avg_at_k,
    mean_pass_at_k,
    parse_pass_ks,
    pass_at_k,
    primary_metric_name,
    summarize_counts,
)
from hybridrft.eval.results import average_metrics, results_markdown, results_table, write_results
from hybridrft.eval.runner import (
    BenchmarkResult,
    GenerationSettings,
    ProgressHooks,
    generations_path,
    read_generations,
    run_benchmark,
    score_completions,
)
from hybridrft.eval.suites import (
    SUITES,
    Benchmark,
    BenchmarkError,
    BenchmarkSpec,
    Suite,
    closest_suite,
    find_suite,
    load_benchmark,
    parse_benchmarks,
)

__all__ = [
    "CHOICE_INSTRUCTION",
    "SUITES",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkResult",
    "BenchmarkSpec",
    "ChoiceQuestion",
    "EvalResult",
    "GenerationSettings",
    "ProgressHooks",
    "Suite",
    "arrange_options",
    "avg_at_k",
    "average_metrics",
    "choice_prompt",
    "closest_suite",
    "default_pass_ks",
    "evaluate",
    "find_suite",
    "generations_path",
    "load_benchmark",
    "mean_avg_at_k",
    "mean_pass_at_k",
    "option_permutation",
    "parse_benchmarks",
    "parse_pass_ks",
    "pass_at_k",
    "primary_metric_name",
    "read_generations",
    "results_markdown",
    "results_table",
    "run_benchmark",
    "score_completions",
    "summarize_counts",
    "write_results",
]
