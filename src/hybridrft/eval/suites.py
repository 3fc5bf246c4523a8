"""Benchmark suites: the built-in definitions of the papers' benchmarks and the ``--suite`` / ``--field``
arguments that name them (loading their data is :mod:`hybridrft.eval.benchmarks`).

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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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


def custom_choice_suite(spec: BenchmarkSpec) -> Suite:
    """The definition of a custom multiple-choice benchmark, from its ``--field`` mapping."""
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
