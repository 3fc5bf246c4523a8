"""Benchmark suites: built-in definitions of the papers' benchmarks, and loading a benchmark's data.

A suite definition says which columns hold what (the column names of the common public copies),
how answers are checked (``math``: the project's math reward; ``choice``: the option letter), the
default generation budget and the metrics the papers report. The data itself comes from the user:
a local JSONL / JSON / Parquet file (CSV for built-in suites), a ``datasets`` folder, or a hub id (the definition names the
usual one, so ``--suite math500`` alone downloads ``HuggingFaceH4/MATH-500``).

Any other name is a custom benchmark: its columns are mapped with ``fields`` (math roles
``prompt``, ``answer``, ``demonstration``, ``id`` through :func:`hybridrft.data.load_examples`;
multiple-choice roles ``question``, ``choices`` or ``correct`` + ``incorrect``, ``answer``,
``answer_index``, ``id``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridrft.data import Example, gsm8k_final_answer, last_boxed, load_examples
from hybridrft.eval.choice import LETTERS, arrange_options, choice_prompt

ANSWER_TYPES = ("math", "choice")
MATH_ROLES = ("prompt", "answer", "solution", "id")
CUSTOM_MATH_ROLES = ("prompt", "answer", "demonstration", "id")  # hybridrft.data field mapping
CHOICE_ROLES = ("question", "choices", "answer", "answer_index", "correct", "incorrect", "id")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class BenchmarkError(ValueError):
    """Input a user can fix (unknown suite, missing file, missing column); the message names it."""


@dataclass(frozen=True)
class Suite:
    """A benchmark definition. ``columns`` maps a role to the column names accepted for it, first
    present wins (public copies differ in capitalisation); the ``incorrect`` role of a
    multiple-choice suite names several columns, comma-separated, all required."""

    name: str
    title: str
    answer_type: str  # math | choice
    columns: Mapping[str, tuple[str, ...]]
    required: tuple[str, ...]
    max_new_tokens: int
    usual_metrics: str
    answer_format: str = "plain"  # plain | gsm8k (the gold answer is the text after "####")
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "test"
    aliases: tuple[str, ...] = ()
    notes: str = ""


_GREEDY = "pass@1, greedy"
_SAMPLED = "avg@32 at temperature 0.6 (--samples 32)"
_PROBLEM = ("problem", "question", "Problem", "Question")
_ANSWER = ("answer", "final_answer", "Answer", "expected_answer")

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "gsm8k", "GSM8K", "math",
            {"prompt": ("question",), "answer": ("answer",), "id": ("id",)},
            ("prompt", "answer"), 1024, _GREEDY, answer_format="gsm8k",
            hub_id="openai/gsm8k", hub_config="main", aliases=("gsm",),
            notes="gold answer after '####' in the answer column",
        ),
        Suite(
            "math500", "MATH-500", "math",
            {"prompt": _PROBLEM, "answer": _ANSWER, "solution": ("solution",), "id": ("unique_id", "id")},
            ("prompt",), 4096, _GREEDY, hub_id="HuggingFaceH4/MATH-500",
            aliases=("math-500", "math_500", "math"),
            notes="answer column, else the last \\boxed{} of the solution",
        ),
        Suite(
            "aime24", "AIME24", "math",
            {"prompt": _PROBLEM, "answer": _ANSWER, "id": ("id", "ID")},
            ("prompt", "answer"), 8192, _SAMPLED, hub_id="HuggingFaceH4/aime_2024", hub_split="train",
            aliases=("aime", "aime2024", "aime-24", "aime_2024"),
        ),
        Suite(
            "amc23", "AMC23", "math",
            {"prompt": ("question", "problem", "Question", "Problem"), "answer": _ANSWER, "id": ("id",)},
            ("prompt", "answer"), 8192, _SAMPLED, hub_id="math-ai/amc23",
            aliases=("amc", "amc2023", "amc-23", "amc_2023"),
        ),
        Suite(
            "minerva", "Minerva", "math",
            {"prompt": ("question", "problem", "Question", "Problem"), "answer": _ANSWER, "solution": ("solution",),
             "id": ("id",)},
            ("prompt",), 4096, _GREEDY, hub_id="math-ai/minervamath",
            aliases=("minerva_math", "minervamath", "minerva-math"),
        ),
        Suite(
            "olympiadbench", "OlympiadBench", "math",
            {"prompt": ("question", "problem", "Question", "Problem"), "answer": ("final_answer", "answer", "Answer"),
             "id": ("id",)},
            ("prompt", "answer"), 4096, _GREEDY, hub_id="math-ai/olympiadbench",
            aliases=("olympiad", "olympiad_bench", "olympiad-bench"),
            notes="a list of final answers is joined with ', '",
        ),
        Suite(
            "arc_c", "ARC-C", "choice",
            {"question": ("question",), "choices": ("choices",), "answer": ("answerKey", "answer"), "id": ("id",)},
            ("question", "choices", "answer"), 1024, _GREEDY,
            hub_id="allenai/ai2_arc", hub_config="ARC-Challenge",
            aliases=("arc", "arc-c", "arc_challenge", "arc-challenge", "arcc"),
            notes="choices = {text: [...], label: [...]}; answerKey is a label",
        ),
        Suite(
            "gpqa", "GPQA-Diamond", "choice",
            {"question": ("Question", "question"), "correct": ("Correct Answer",),
             "incorrect": ("Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3",), "id": ("Record ID", "id")},
            ("question", "correct", "incorrect"), 4096, _GREEDY,
            hub_id="Idavidrein/gpqa", hub_config="gpqa_diamond", hub_split="train",
            aliases=("gpqa_diamond", "gpqa-diamond", "gpqadiamond"),
            notes="gated on the hub: accept its terms and log in first",
        ),
        Suite(
            "mmlu_pro", "MMLU-Pro", "choice",
            {"question": ("question",), "choices": ("options",), "answer": ("answer",),
             "answer_index": ("answer_index",), "id": ("question_id", "id")},
            ("question", "choices"), 4096, _GREEDY, hub_id="TIGER-Lab/MMLU-Pro",
            aliases=("mmlu-pro", "mmlupro", "mmlu"),
            notes="up to 10 options (A-J); answer_index, else the answer letter",
        ),
    )
}
_ALIASES = {alias: suite.name for suite in SUITES.values() for alias in (suite.name, *suite.aliases)}


def find_suite(name: str) -> Suite | None:
    """The built-in suite called ``name`` (case-insensitive, aliases such as "math-500" included)."""
    key = _ALIASES.get(name.lower())
    return SUITES[key] if key else None


def closest_suite(name: str, cutoff: float = 0.6) -> str | None:
    """The built-in suite whose name or alias is closest to ``name``, if any is close enough."""
    close = difflib.get_close_matches(name.lower(), list(_ALIASES), n=1, cutoff=cutoff)
    return _ALIASES[close[0]] if close else None


@dataclass
class BenchmarkSpec:
    """One ``--suite`` argument: a benchmark name, where its data is, and its column mapping."""

    name: str
    source: str | None
    suite: Suite | None  # None: a custom benchmark
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def answer_type(self) -> str:
        if self.suite is not None:
            return self.suite.answer_type
        return "choice" if {"choices", "correct", "incorrect", "question"} & set(self.fields) else "math"


def parse_fields(items: Sequence[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """``--field ROLE=COLUMN`` (every benchmark) and ``--field BENCH.ROLE=COLUMN`` (one benchmark)."""
    common: dict[str, str] = {}
    per_benchmark: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, column = item.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or not key or not column:
            raise BenchmarkError(f"--field takes ROLE=COLUMN or BENCHMARK.ROLE=COLUMN, got {item!r}")
        bench, dot, role = key.rpartition(".")
        if dot:
            per_benchmark.setdefault(bench, {})[role] = column
        else:
            common[role] = column
    return common, per_benchmark


def parse_benchmarks(suites: Sequence[str], *, data: str | None = None, fields: Sequence[str] = ()) -> list[BenchmarkSpec]:
    """Turn ``--suite NAME[=SOURCE]`` arguments (and ``--data SOURCE``, the same as
    ``--suite custom=SOURCE``) into benchmark specs. Raises :class:`BenchmarkError`."""
    items = list(suites)
    if data:
        items.append(f"custom={data}")
    if not items:
        raise BenchmarkError(
            "nothing to evaluate: give --suite NAME=PATH (or --suite NAME for a built-in suite with a hub "
            f"default), or --data PATH; built-in suites: {', '.join(SUITES)}"
        )
    common, per_benchmark = parse_fields(fields)
    specs: list[BenchmarkSpec] = []
    for item in items:
        name, sep, source = item.partition("=")
        name, source = name.strip(), source.strip()
        suite = find_suite(name)
        if not _NAME.match(name):
            raise BenchmarkError(
                f"benchmark name {name!r} in --suite {item!r} must be letters, digits, '_' or '-' "
                "(it names the generations file)"
            )
        if suite is None and not sep:
            close = closest_suite(name)
            hint = f"; did you mean {close!r}?" if close else ""
            raise BenchmarkError(
                f"unknown benchmark suite {name!r}{hint} Built-in suites: {', '.join(SUITES)}; "
                f"for your own data give --suite {name}=PATH with --field ROLE=COLUMN"
            )
        if sep and not source:
            raise BenchmarkError(f"--suite {item!r} names no data source after '='")
        if suite is not None and not source and suite.hub_id is None:
            raise BenchmarkError(f"suite {suite.name!r} has no default source; give --suite {suite.name}=PATH")
        bench_name = suite.name if suite is not None else name
        if any(spec.name == bench_name for spec in specs):
            raise BenchmarkError(f"benchmark {bench_name!r} is given twice")
        own = per_benchmark.pop(name, {}) | per_benchmark.pop(bench_name, {})
        specs.append(BenchmarkSpec(bench_name, source or None, suite, {**common, **own}))
    if per_benchmark:
        unknown = sorted(per_benchmark)
        raise BenchmarkError(
            f"--field names benchmark(s) {unknown} that no --suite gives; benchmarks: {[s.name for s in specs]}"
        )
    for spec in specs:
        _check_roles(spec)
    return specs


def _check_roles(spec: BenchmarkSpec) -> None:
    answer_type = spec.answer_type
    if spec.suite is not None:
        valid = MATH_ROLES if answer_type == "math" else CHOICE_ROLES
    else:
        valid = CUSTOM_MATH_ROLES if answer_type == "math" else CHOICE_ROLES
    for role in spec.fields:
        if role not in valid:
            close = difflib.get_close_matches(role, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BenchmarkError(
                f"benchmark {spec.name!r} ({answer_type}): unknown field role {role!r}{hint} "
                f"Roles: {', '.join(valid)}"
            )


# --- loading ------------------------------------------------------------------------------------


@dataclass
class Benchmark:
    """A benchmark ready to run: its problems as Examples and how to score them."""

    name: str
    answer_type: str  # math | choice
    source: str
    examples: list[Example]
    suite: str | None = None
    max_new_tokens: int | None = None  # the suite's default; None for custom benchmarks


def load_benchmark(
    spec: BenchmarkSpec,
    *,
    limit: int | None = None,
    seed: int = 0,
    shuffle_options: bool = True,
    format: str = "auto",
    split: str | None = None,
) -> Benchmark:
    """Read a benchmark's problems. Raises :class:`BenchmarkError` naming the benchmark and input."""
    suite = spec.suite
    source = spec.source or (suite.hub_id if suite else None)
    assert source is not None  # parse_benchmarks guarantees it
    try:
        if suite is None and spec.answer_type == "math":
            examples = load_examples(
                source, format=format, fields=spec.fields or None, split=split or "test", limit=limit
            )
            return Benchmark(spec.name, "math", source, examples)
        if suite is None:
            suite = _custom_choice_suite(spec)
        examples = _suite_examples(
            spec.name, suite, source, spec.fields, limit=limit, seed=seed, shuffle=shuffle_options, split=split
        )
    except BenchmarkError as error:
        raise BenchmarkError(f"benchmark {spec.name!r}: {error}") from None
    except FileNotFoundError as error:
        raise BenchmarkError(f"benchmark {spec.name!r}: {error}") from None
    except ValueError as error:
        message = f"benchmark {spec.name!r}: {error}"
        if spec.suite is None and not spec.fields and "unknown data layout" in message:
            message = (
                f"benchmark {spec.name!r}: {source}: unknown layout; map its columns with --field prompt=COLUMN "
                "--field answer=COLUMN (math) or --field question=COLUMN --field choices=COLUMN --field "
                f"answer=COLUMN (multiple choice); {str(error).split('naming its columns; ')[-1]}"
            )
        close = closest_suite(spec.name, cutoff=0.75) if spec.suite is None else None
        if close:
            message += f" ({spec.name!r} is not a built-in suite; did you mean {close!r}?)"
        raise BenchmarkError(message) from None
    except Exception as error:  # datasets raises many kinds (network, gated repo, missing config)
        raise BenchmarkError(f"benchmark {spec.name!r}: cannot read {source}: {type(error).__name__}: {error}") from None
    if not examples:
        raise BenchmarkError(f"benchmark {spec.name!r}: {source} has no problems")
    return Benchmark(
        spec.name, suite.answer_type, source, examples,
        suite=spec.suite.name if spec.suite else None,
        max_new_tokens=spec.suite.max_new_tokens if spec.suite else None,
    )


def _custom_choice_suite(spec: BenchmarkSpec) -> Suite:
    columns = {role: (column,) for role, column in spec.fields.items()}
    if "question" not in columns:
        raise BenchmarkError("a multiple-choice benchmark needs --field question=COLUMN")
    if "choices" in columns:
        if "answer" not in columns and "answer_index" not in columns:
            raise BenchmarkError("with --field choices=COLUMN, also map answer=COLUMN (a letter, label or index)")
        required = ("question", "choices")
    elif "correct" in columns and "incorrect" in columns:
        required = ("question", "correct", "incorrect")
    else:
        raise BenchmarkError(
            "a multiple-choice benchmark needs --field choices=COLUMN (a list of options) and answer=COLUMN, "
            "or --field correct=COLUMN and incorrect=COL1,COL2,..."
        )
    return Suite(spec.name, spec.name, "choice", columns, required, 1024, _GREEDY)


def _read_rows(source: str, split: str, config: str | None) -> Iterator[tuple[str, dict[str, Any] | None, str | None]]:
    """(where, row, problem) for each row of a file, a datasets folder or a hub dataset."""
    from hybridrft.data.loaders import read_rows  # the data layer's reader: files, folders, hub ids

    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":  # GPQA is distributed as CSV
        import csv

        with path.open(encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield f"line {number}", dict(row), None
        return
    if config is not None and not Path(source).expanduser().exists():
        import datasets

        for number, row in enumerate(datasets.load_dataset(source, config, split=split), start=1):
            yield f"row {number}", dict(row), None
        return
    for raw in read_rows(source, split):
        yield raw.where, raw.data, raw.problem


def _resolve_columns(
    suite: Suite, overrides: Mapping[str, str], columns: list[str], source: str, name: str
) -> dict[str, str | list[str]]:
    """Role -> column (a list of columns for ``incorrect``), from the overrides or the suite's names."""
    resolved: dict[str, str | list[str]] = {}
    for role in dict.fromkeys([*suite.columns, *overrides]):
        candidates = (overrides[role],) if role in overrides else suite.columns[role]
        if role == "incorrect":
            wanted = [c.strip() for c in candidates[0].split(",") if c.strip()]
            missing = [c for c in wanted if c not in columns]
            if not missing:
                resolved[role] = wanted
                continue
            found = None
            candidates = (missing[0],)
        else:
            found = next((c for c in candidates if c in columns), None)
        if found is not None:
            resolved[role] = found
            continue
        if role in suite.required or role in overrides:
            close = difflib.get_close_matches(candidates[0], columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            tried = " / ".join(repr(c) for c in candidates)
            raise BenchmarkError(
                f"{source}: column {tried} (for {role}) not found; columns are {columns}{hint} "
                f"(map it with --field {name}.{role}=COLUMN)"
            )
    return resolved


def _text(value: Any, what: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{what} is empty")
    raise ValueError(f"{what} must be text, got {type(value).__name__}")


def _answer_text(value: Any) -> str:
    """A gold answer as text: numbers without a spurious ".0", lists joined, "$...$" unwrapped."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(a for a in (_answer_text(v) for v in value) if a)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def _suite_examples(
    name: str,
    suite: Suite,
    source: str,
    overrides: Mapping[str, str],
    *,
    limit: int | None,
    seed: int,
    shuffle: bool,
    split: str | None,
) -> list[Example]:
    hub_default = source == suite.hub_id
    rows = _read_rows(source, split or (suite.hub_split if hub_default else "test"), suite.hub_config if hub_default else None)
    examples: list[Example] = []
    seen_ids: set[str] = set()
    columns: dict[str, str | list[str]] | None = None
    index = 0
    for where, row, problem in rows:
        if limit is not None and len(examples) >= limit:
            break
        if row is None:
            raise ValueError(f"{source}, {where}: {problem}")
        if columns is None:
            columns = _resolve_columns(suite, overrides, list(row), source, name)
        try:
            if suite.answer_type == "math":
                example = _math_example(name, suite, row, columns, index)
            else:
                example = _choice_example(name, row, columns, index, seed=seed, shuffle=shuffle)
        except ValueError as error:
            raise ValueError(f"{source}, {where}: {error}") from None
        if example.id in seen_ids:
            raise ValueError(f"{source}, {where}: duplicate problem id {example.id!r}")
        seen_ids.add(example.id)
        examples.append(example)
        index += 1
    if columns is None and limit != 0:
        raise ValueError(f"{source} has no rows")
    return examples


def _problem_id(name: str, row: Mapping[str, Any], columns: Mapping[str, Any], index: int) -> str:
    column = columns.get("id")
    value = row.get(column) if isinstance(column, str) else None
    return f"{name}-{index}" if value is None or value == "" else str(value)


def _math_example(name: str, suite: Suite, row: Mapping[str, Any], columns: Mapping[str, Any], index: int) -> Example:
    prompt = _text(row.get(columns["prompt"]), f"field {columns['prompt']!r}")
    answer_column = columns.get("answer")
    answer = _answer_text(row.get(answer_column)) if answer_column else ""
    if answer and suite.answer_format == "gsm8k":
        final = gsm8k_final_answer(answer)
        if not final:
            raise ValueError(f"field {answer_column!r} has no '#### <final answer>' line")
        answer = final
    if not answer and "solution" in columns:
        solution = row.get(columns["solution"])
        answer = (last_boxed(solution) or "") if isinstance(solution, str) else ""
    if not answer:
        where = f"field {answer_column!r} is empty" if answer_column else "no answer column"
        raise ValueError(f"{where} and there is no solution with a \\boxed{{}} answer")
    return Example(id=_problem_id(name, row, columns, index), prompt=prompt, demonstrations=[], answer=answer)


def _options_and_labels(value: Any, column: str) -> tuple[list[str], list[str] | None]:
    """Options from a list of texts, a ``{text: [...], label: [...]}`` mapping (ARC), or a list of
    ``{text, label}`` mappings."""
    if isinstance(value, Mapping) and "text" in value:
        texts = list(value["text"])
        labels = [str(label).strip() for label in value.get("label") or []] or None
        if labels is not None and len(labels) != len(texts):
            raise ValueError(f"field {column!r} has {len(texts)} texts but {len(labels)} labels")
        return [str(t) for t in texts], labels
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        return [str(v.get("text", "")) for v in value], [str(v.get("label", "")).strip() for v in value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value], None
    raise ValueError(f"field {column!r} must be a list of options, got {type(value).__name__}")


def _gold_index(value: Any, options: list[str], labels: list[str] | None, column: str) -> int:
    """Where the gold answer is among the options: a label, a letter, a 0-based index, or the text."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"field {column!r} is empty")
    text = str(value).strip()
    if labels is not None and text in labels:
        return labels.index(text)
    letter = text.strip("()").strip().upper()
    if len(letter) == 1 and letter in LETTERS[: len(options)]:
        return LETTERS.index(letter)
    if isinstance(value, int) and 0 <= value < len(options):
        return value
    stripped = [option.strip() for option in options]
    if text in stripped:
        return stripped.index(text)
    raise ValueError(f"answer {value!r} in field {column!r} is not an option label, letter, index or text")


def _choice_example(
    name: str, row: Mapping[str, Any], columns: Mapping[str, Any], index: int, *, seed: int, shuffle: bool
) -> Example:
    question = _text(row.get(columns["question"]), f"field {columns['question']!r}")
    if "choices" in columns:
        options, labels = _options_and_labels(row.get(columns["choices"]), columns["choices"])
        gold = None
        index_column = columns.get("answer_index")
        if index_column and row.get(index_column) is not None:
            gold = row[index_column]
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(options):
                raise ValueError(f"field {index_column!r} = {gold!r} is not an option index (0..{len(options) - 1})")
        elif "answer" in columns:
            gold = _gold_index(row.get(columns["answer"]), options, labels, columns["answer"])
        else:
            raise ValueError("no answer column")
    else:
        correct = _text(row.get(columns["correct"]), f"field {columns['correct']!r}")
        options = [correct] + [_text(row.get(c), f"field {c!r}") for c in columns["incorrect"]]
        gold = 0
    options = [option.strip() for option in options]
    problem_id = _problem_id(name, row, columns, index)
    arranged = arrange_options(options, gold, seed=seed, key=f"{name}/{problem_id}", shuffle=shuffle)
    return Example(
        id=problem_id,
        prompt=choice_prompt(question, arranged.options),
        demonstrations=[],
        answer=arranged.gold_letter,
        meta={"choices": arranged.options, "permutation": arranged.permutation, "num_choices": len(options)},
    )
