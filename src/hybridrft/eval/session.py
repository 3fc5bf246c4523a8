"""One ``hybridrft eval`` invocation: the options checked and the benchmarks loaded (before any model),
the model loaded, every benchmark run, and ``results.json`` / ``results.md`` written after each.

The command (``hybridrft.cli.eval_cmd``) only parses the options, calls these and prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridrft.data.loaders import FORMATS
from hybridrft.eval.benchmarks import Benchmark, load_benchmark
from hybridrft.eval.metrics import parse_pass_ks
from hybridrft.eval.results import write_results
from hybridrft.eval.runner import GENERATIONS_DIR, BenchmarkResult, GenerationSettings, ProgressHooks, run_benchmark
from hybridrft.eval.suites import BenchmarkError, parse_benchmarks

DEFAULT_MAX_NEW_TOKENS = 1024  # for a custom benchmark, when --max-new-tokens is not given


@dataclass
class EvalOptions:
    """What ``hybridrft eval`` was asked for; ``None`` means the default described by each option."""

    model: str
    suites: list[str] = field(default_factory=list)
    data: str | None = None
    format: str = "auto"
    fields: list[str] = field(default_factory=list)
    split: str | None = None
    limit: int | None = None
    samples: int = 1
    temperature: float | None = None  # 0 for one sample, 0.6 for several
    top_p: float = 1.0
    pass_k: str | None = None
    max_new_tokens: int | None = None  # the suite's, else DEFAULT_MAX_NEW_TOKENS
    batch_size: int = 32
    max_prompt_tokens: int = 2048
    system_prompt: str | None = None
    seed: int = 0
    correct_threshold: float = 1.0
    shuffle_options: bool = True
    output: Path | None = None  # evals/<model>
    overwrite: bool = False
    dtype: str = "auto"
    device: str = "auto"
    backend: str = "native"  # native | hf | vllm: the sampler (rollout.backend's choices)


@dataclass
class EvalPlan:
    """Checked options with their defaults filled in, and the benchmarks' problems."""

    options: EvalOptions
    temperature: float
    pass_ks: list[int]
    benchmarks: list[Benchmark]
    output: Path


@dataclass
class LoadedModel:
    """The model to evaluate: ``path`` is what it resolved to (a run folder's model, say)."""

    path: str
    tokenizer: Any
    sampler: Any
    device: str
    dtype: str


@dataclass
class EvalOutcome:
    results: list[BenchmarkResult]
    results_json: Path
    results_md: Path

    @property
    def reused(self) -> int:
        return sum(r.reused for r in self.results)

    @property
    def generated(self) -> int:
        return sum(r.generated_this_run for r in self.results)


def default_output(model: str) -> Path:
    """``evals/<model>``, the model's name or path made a folder name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").replace("/", "__")).strip("._") or "model"
    return Path("evals") / slug


def plan_evaluation(options: EvalOptions) -> EvalPlan:
    """Check the options and load every benchmark's problems, before any model is loaded.
    Bad input is a :class:`BenchmarkError` (or another ``ValueError``) naming it."""
    from hybridrft.models.loading import DTYPES

    if options.format not in FORMATS:
        raise BenchmarkError(f"unknown --format {options.format!r}; choose one of {', '.join(FORMATS)}")
    from hybridrft.rollout import SAMPLER_BACKENDS

    if options.backend not in SAMPLER_BACKENDS:
        raise BenchmarkError(f"unknown --backend {options.backend!r}; choose one of {', '.join(SAMPLER_BACKENDS)}")
    if options.dtype != "auto" and options.dtype not in DTYPES:
        raise BenchmarkError(f"unknown --dtype {options.dtype!r}; choose auto, {', '.join(DTYPES)}")
    temperature = options.temperature
    if temperature is None:
        temperature = 0.0 if options.samples == 1 else 0.6
    if options.samples > 1 and temperature == 0:
        raise BenchmarkError(
            f"--samples {options.samples} with --temperature 0 would give {options.samples} identical greedy "
            "completions; give a temperature > 0 (0.6 is usual)"
        )
    pass_ks = parse_pass_ks(options.pass_k, options.samples)
    specs = parse_benchmarks(options.suites, data=options.data, fields=options.fields)
    benchmarks = [
        load_benchmark(
            spec, limit=options.limit, seed=options.seed, shuffle_options=options.shuffle_options,
            format=options.format, split=options.split,
        )
        for spec in specs
    ]
    output = options.output if options.output is not None else default_output(options.model)
    return EvalPlan(options, temperature, pass_ks, benchmarks, output)


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 32, backend: str = "native",
    max_model_len: int = 4096,
) -> LoadedModel:
    """The policy and tokenizer of ``model`` (a hub id, a model folder, a run or checkpoint folder:
    its model) on ``device`` ("auto": cuda when available), with a sampler (``backend``; a vLLM engine
    gets the policy's weights and a context of ``max_model_len`` tokens, and the policy itself stays on
    the CPU). Raises ``ModelNotFoundError``, ``OSError`` or ``ValueError`` for a model that cannot be loaded."""
    import torch

    from hybridrft.models import inference_weights, load_policy, load_tokenizer, model_in_folder
    from hybridrft.rollout import VLLMSampler, build_sampler

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    local = Path(model).expanduser()
    found = model_in_folder(local) if local.is_dir() else None  # a run or checkpoint folder: its model
    path = str(found) if found is not None else model
    tokenizer = load_tokenizer(path)
    policy = load_policy(path, dtype=dtype).eval()
    if device != "cpu" and backend != "vllm":
        policy.to(device)
    sampler = build_sampler(backend, policy, tokenizer, batch_size=batch_size, max_model_len=max_model_len)
    if isinstance(sampler, VLLMSampler):
        sampler.load_weights(inference_weights(policy).items())
    return LoadedModel(path, tokenizer, sampler, device, dtype)


def run_settings(plan: EvalPlan, model: LoadedModel) -> dict[str, Any]:
    """The settings of the whole evaluation, as ``results.json`` records them."""
    o = plan.options
    return {
        "samples": o.samples,
        "temperature": plan.temperature,
        "top_p": o.top_p,
        "pass_k": plan.pass_ks,
        "seed": o.seed,
        "shuffle_options": o.shuffle_options,
        "system_prompt": o.system_prompt,
        "max_new_tokens": o.max_new_tokens,
        "max_prompt_tokens": o.max_prompt_tokens,
        "batch_size": o.batch_size,
        "limit": o.limit,
        "dtype": model.dtype,
        "device": model.device,
        "backend": o.backend,
    }


def generation_settings(plan: EvalPlan, model: LoadedModel, benchmark: Benchmark) -> GenerationSettings:
    """What one benchmark's generations depend on (stored in each of its generation records)."""
    o = plan.options
    return GenerationSettings(
        model=model.path,  # resolved: a run folder's newest checkpoint changes as the run goes on
        temperature=plan.temperature,
        top_p=o.top_p,
        max_new_tokens=o.max_new_tokens or benchmark.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
        seed=o.seed,
        system_prompt=o.system_prompt,
        shuffle_options=o.shuffle_options if benchmark.answer_type == "choice" else True,
    )


def context_length(plan: EvalPlan) -> int:
    """The longest sequence the plan can ask for: the prompt limit plus the largest token budget."""
    o = plan.options
    budget = max(o.max_new_tokens or b.max_new_tokens or DEFAULT_MAX_NEW_TOKENS for b in plan.benchmarks)
    return o.max_prompt_tokens + budget


def run_evaluation(plan: EvalPlan, model: LoadedModel, hooks: ProgressHooks | None = None) -> EvalOutcome:
    """Run every benchmark of ``plan`` (resuming from the generations already in the output folder)
    and write the results after each one, so an interrupted evaluation keeps the finished ones'."""
    o = plan.options
    results: list[BenchmarkResult] = []
    paths: tuple[Path, Path] | None = None
    for benchmark in plan.benchmarks:
        results.append(
            run_benchmark(
                benchmark, sampler=model.sampler, tokenizer=model.tokenizer, output_dir=plan.output,
                settings=generation_settings(plan, model, benchmark), samples=o.samples, pass_ks=plan.pass_ks,
                batch_size=o.batch_size, max_prompt_tokens=o.max_prompt_tokens, overwrite=o.overwrite,
                hooks=hooks, correct_threshold=o.correct_threshold,
            )
        )
        paths = write_results(
            plan.output, model=o.model, model_path=model.path, settings=run_settings(plan, model), results=results
        )
    assert paths is not None  # parse_benchmarks gives at least one benchmark
    return EvalOutcome(results, *paths)


def generations_folder(plan: EvalPlan) -> Path:
    return plan.output / GENERATIONS_DIR
