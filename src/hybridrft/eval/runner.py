"""Run one benchmark: batched generation, scoring, one JSONL line per generation, resumable.

Every generation (a :class:`~hybridrft.eval.records.GenerationRecord`, the record training-time
evaluation writes too) is appended to ``generations/<benchmark>.jsonl`` as soon as its batch is scored
and the file is flushed, so an interrupted evaluation loses at most the batch in flight. On the next
run the file is read back, a half-written last line is cut off, and only the problems with missing
samples are generated again (keeping the missing samples). A problem's samples come from one call
that shares their prompt pass, seeded by the problem alone, so a resumed evaluation writes the same
samples an uninterrupted one would. Each line carries the settings it was made with; a file
written with other settings (another model, temperature, budget, seed) is an error rather than a
silent mix.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hybridrft.data import DEFAULT_ANSWER_INSTRUCTION, Example
from hybridrft.eval.benchmarks import Benchmark
from hybridrft.eval.choice import CHOICE_INSTRUCTION
from hybridrft.eval.metrics import primary_metric_name, summarize_counts
from hybridrft.eval.records import GenerationFileError, GenerationRecord, generation_record, read_records
from hybridrft.eval.suites import BenchmarkError
from hybridrft.rewards import combine_rewards, extract_answer, extract_choice_letter, get_reward
from hybridrft.rollout import Sampler, SamplingParams, encode_prompts

GENERATIONS_DIR = "generations"


@dataclass(frozen=True)
class GenerationSettings:
    """What a generation depends on besides the problem; stored in every generation line."""

    model: str
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    system_prompt: str | None = None
    shuffle_options: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchmarkResult:
    """The summary of one benchmark, as written to results.json."""

    name: str
    suite: str | None
    answer_type: str
    source: str
    problems: int
    samples: int
    primary_metric: str
    metrics: dict[str, float]
    mean_response_tokens: float
    truncated: float  # share of generations cut at max_new_tokens
    answered: float  # share of generations with an extractable final answer
    max_new_tokens: int
    generated_this_run: int
    reused: int  # generations read back from an earlier, interrupted run
    skipped_prompts: int  # longer than max_prompt_tokens
    generations: str  # path of the generations file, relative to the output folder
    ignored_records: int = 0  # lines of the file for problems or samples outside this evaluation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProgressHooks:
    """Callbacks for a progress bar: ``start(benchmark, total, already_done)`` and ``advance(k)``."""

    start: Callable[[str, int, int], None] = lambda name, total, done: None
    advance: Callable[[int], None] = lambda count: None


@dataclass
class _Existing:
    records: dict[tuple[str, int], GenerationRecord] = field(default_factory=dict)
    ignored: int = 0


def generations_path(output_dir: str | Path, benchmark: str) -> Path:
    return Path(output_dir) / GENERATIONS_DIR / f"{benchmark}.jsonl"


def read_generations(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The generation records of a JSONL file, as dicts; a half-written last line is ignored.

    A kill can leave the last line without its newline and cut short. With ``repair=True`` such a
    line is cut off the file (or, when it is complete JSON, given its newline back), so the lines
    appended next start on a line of their own. An unreadable line elsewhere is an error naming it.
    """
    try:
        return read_records(path, repair=repair)
    except GenerationFileError as error:
        raise BenchmarkError(f"{error}; remove the line or pass --overwrite") from None


def _existing_records(path: Path, examples: list[Example], samples: int, settings: GenerationSettings) -> _Existing:
    gold = {example.id: example.answer for example in examples}
    expected = settings.as_dict()
    existing = _Existing()
    for number, data in enumerate(read_generations(path, repair=True), start=1):
        stored = data.get("settings")
        if not isinstance(stored, dict):
            raise BenchmarkError(f"{path}, record {number}: no settings; not written by hybridrft eval (use --overwrite)")
        differ = [key for key in expected if stored.get(key) != expected[key]]
        if differ:
            changes = ", ".join(f"{key}={stored.get(key)!r} there, {expected[key]!r} now" for key in differ)
            raise BenchmarkError(
                f"{path} holds generations made with other settings ({changes}); pass --overwrite to start "
                "this benchmark over, or choose another --output folder"
            )
        try:
            record = GenerationRecord.from_json({"sample": -1, **data}, f"{path}, record {number}")
        except (GenerationFileError, TypeError, ValueError) as error:
            raise BenchmarkError(f"{error}; pass --overwrite to start over") from None
        key = (record.id, record.sample)
        if key[0] not in gold or not 0 <= key[1] < samples:
            existing.ignored += 1
            continue
        if record.answer != gold[key[0]]:
            raise BenchmarkError(
                f"{path}: problem {key[0]!r} has gold answer {record.answer!r} there but {gold[key[0]]!r} "
                "in the data now (the data changed?); pass --overwrite to start over"
            )
        if key in existing.records:
            existing.ignored += 1
            continue
        existing.records[key] = record
    return existing


def problem_seed(seed: int, benchmark: str, problem_id: str) -> int:
    """The sampling seed of one problem's samples: a function of the run's seed and the problem
    alone, so a problem gets the same samples whatever else shares its batch."""
    return zlib.crc32(f"{seed}/{benchmark}/{problem_id}".encode())


def score_completions(answer_type: str, examples: list[Example], texts: list[str]) -> tuple[list[float], list[str | None]]:
    """Scores (math reward or choice reward) and the extracted final answers, one per text."""
    prompts = [example.prompt for example in examples]
    answers = [example.answer for example in examples]
    if answer_type == "choice":
        counts = [int(example.meta.get("num_choices") or 0) or None for example in examples]
        scores, _ = combine_rewards(
            [("choice", get_reward("choice"), 1.0)], prompts, texts, answers, {"num_choices": counts}
        )
        extracted = [extract_choice_letter(text, count) for text, count in zip(texts, counts)]
    else:
        scores, _ = combine_rewards([("math", get_reward("math"), 1.0)], prompts, texts, answers)
        extracted = [extract_answer(text) for text in texts]
    return scores, extracted


def run_benchmark(
    benchmark: Benchmark,
    *,
    sampler: Sampler,
    tokenizer,
    output_dir: str | Path,
    settings: GenerationSettings,
    samples: int = 1,
    pass_ks: list[int] | None = None,
    batch_size: int = 32,
    max_prompt_tokens: int = 2048,
    overwrite: bool = False,
    hooks: ProgressHooks | None = None,
    correct_threshold: float = 1.0,
) -> BenchmarkResult:
    """Generate ``samples`` completions per problem (only those not already in the generations
    file), score them, append them to the file, and summarise the benchmark. A completion is
    correct when its score is at least ``correct_threshold`` (a run's ``reward.correct_threshold``)."""
    hooks = hooks or ProgressHooks()
    pass_ks = list(pass_ks or [])
    instruction = CHOICE_INSTRUCTION if benchmark.answer_type == "choice" else DEFAULT_ANSWER_INSTRUCTION
    examples, prompt_ids = encode_prompts(
        tokenizer,
        benchmark.examples,
        system_prompt=settings.system_prompt,
        answer_instruction=instruction,
        max_prompt_tokens=max_prompt_tokens,
        source=f"benchmark {benchmark.name}",
    )
    path = generations_path(output_dir, benchmark.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite and path.exists():
        path.unlink()
    existing = _existing_records(path, examples, samples, settings)
    missing = {i: [s for s in range(samples) if (example.id, s) not in existing.records] for i, example in enumerate(examples)}
    pending = [i for i in range(len(examples)) if missing[i]]
    generated = sum(len(missing[i]) for i in pending)
    hooks.start(benchmark.name, len(examples) * samples, len(examples) * samples - generated)
    # all samples of a problem in one call: one prompt pass serves them all
    params = SamplingParams(
        n=samples, temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=settings.max_new_tokens
    )
    problems_per_call = max(1, batch_size // samples)
    records = dict(existing.records)
    with path.open("a", encoding="utf-8") as handle:
        for start in range(0, len(pending), problems_per_call):
            chunk = pending[start : start + problems_per_call]
            seeds = [problem_seed(settings.seed, benchmark.name, examples[i].id) for i in chunk]
            completions = sampler.generate([prompt_ids[i] for i in chunk], params, seeds=seeds)
            # a resumed problem draws all its samples again and keeps the missing ones, which are
            # then the very samples an uninterrupted run made
            wanted = [(i, s, completions[k * samples + s]) for k, i in enumerate(chunk) for s in missing[i]]
            scores, extracted = score_completions(
                benchmark.answer_type, [examples[i] for i, _, _ in wanted], [c.text for _, _, c in wanted]
            )
            for (i, sample, completion), score, answer in zip(wanted, scores, extracted):
                record = generation_record(
                    examples[i], sample, completion, score, answer,
                    correct_threshold=correct_threshold, settings=settings.as_dict(),
                )
                records[(examples[i].id, sample)] = record
                handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            handle.flush()
            hooks.advance(len(wanted))

    counts = []
    for example in examples:
        mine = [records[(example.id, s)] for s in range(samples)]
        counts.append((samples, sum(r.correct for r in mine)))
    all_records = list(records.values())
    total = max(len(all_records), 1)
    return BenchmarkResult(
        name=benchmark.name,
        suite=benchmark.suite,
        answer_type=benchmark.answer_type,
        source=benchmark.source,
        problems=len(examples),
        samples=samples,
        primary_metric=primary_metric_name(samples, settings.temperature),
        metrics=summarize_counts(counts, samples=samples, temperature=settings.temperature, pass_ks=pass_ks),
        mean_response_tokens=sum(r.tokens for r in all_records) / total,
        truncated=sum(r.truncated for r in all_records) / total,
        answered=sum(r.extracted is not None for r in all_records) / total,
        max_new_tokens=settings.max_new_tokens,
        generated_this_run=generated,
        reused=len(existing.records),
        skipped_prompts=len(benchmark.examples) - len(examples),
        generations=str(Path(GENERATIONS_DIR) / path.name),
        ignored_records=existing.ignored,
    )
