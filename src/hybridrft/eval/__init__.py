"""Evaluation: held-out accuracy for the trainer, the benchmark runner behind `hybridrft eval`
(built-in suites, multiple choice, avg@k and unbiased pass@k, resumable generation files), the one
generation record both write, and the two-model token scoring behind `hybridrft analyze shift`.

Modules: ``records`` (the generation record), ``accuracy`` (training-time evaluation), ``suites``
(the built-in suite table and ``--suite`` / ``--field`` parsing), ``benchmarks`` (loading a
benchmark's problems), ``choice`` (multiple-choice questions), ``runner`` (one benchmark, resumable),
``metrics``, ``results`` (results.json, results.md), ``session`` (one ``hybridrft eval`` invocation),
``shift`` (token probabilities of responses under two models).
"""

from hybridrft.eval.accuracy import EvalResult, evaluate, evaluate_sharded
from hybridrft.eval.benchmarks import Benchmark, load_benchmark
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
from hybridrft.eval.records import (
    GenerationFileError,
    GenerationRecord,
    generation_record,
    read_generation_records,
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
from hybridrft.eval.shift import (
    ResponsesError,
    ShiftResult,
    TokenShift,
    completion_token_probs,
    load_responses,
    token_shift,
    write_shift_data,
)
from hybridrft.eval.suites import (
    SUITES,
    BenchmarkError,
    BenchmarkSpec,
    Suite,
    closest_suite,
    find_suite,
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
    "GenerationFileError",
    "GenerationRecord",
    "GenerationSettings",
    "ProgressHooks",
    "ResponsesError",
    "ShiftResult",
    "Suite",
    "TokenShift",
    "arrange_options",
    "avg_at_k",
    "average_metrics",
    "choice_prompt",
    "closest_suite",
    "completion_token_probs",
    "default_pass_ks",
    "evaluate",
    "evaluate_sharded",
    "find_suite",
    "generation_record",
    "generations_path",
    "load_benchmark",
    "load_responses",
    "mean_avg_at_k",
    "mean_pass_at_k",
    "option_permutation",
    "parse_benchmarks",
    "parse_pass_ks",
    "pass_at_k",
    "primary_metric_name",
    "read_generation_records",
    "read_generations",
    "results_markdown",
    "results_table",
    "run_benchmark",
    "score_completions",
    "summarize_counts",
    "token_shift",
    "write_results",
    "write_shift_data",
]
