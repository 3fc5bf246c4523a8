"""Load a benchmark's problems: rows read by the data layer, turned into Examples by the suite's
column mapping (math: prompt and gold answer; multiple choice: :func:`hybridrft.eval.choice.choice_example`).

The data comes from the user: a local JSONL / JSON / Parquet / CSV file, a ``datasets`` folder, or a
hub id (a suite names the usual one, so ``--suite math500`` alone downloads ``HuggingFaceH4/MATH-500``).
A custom math benchmark is read by :func:`hybridrft.data.load_examples` with its ``fields`` mapping.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hybridrft.data import Example, gsm8k_final_answer, last_boxed, load_examples
from hybridrft.data.adapters import required_text, row_id
from hybridrft.data.loaders import read_rows
from hybridrft.eval.choice import choice_example
from hybridrft.eval.suites import BenchmarkError, BenchmarkSpec, Suite, closest_suite, custom_choice_suite


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
            suite = custom_choice_suite(spec)
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
    rows = read_rows(source, split or (suite.hub_split if hub_default else "test"), suite.hub_config if hub_default else None)
    examples: list[Example] = []
    seen_ids: set[str] = set()
    columns: dict[str, str | list[str]] | None = None
    index = 0
    for raw in rows:
        where, row = raw.where, raw.data
        if limit is not None and len(examples) >= limit:
            break
        if row is None:
            raise ValueError(f"{source}, {where}: {raw.problem}")
        if columns is None:
            columns = _resolve_columns(suite, overrides, list(row), source, name)
        try:
            id_column, default_id = columns.get("id"), f"{name}-{index}"
            problem_id = row_id(row, id_column, default_id) if isinstance(id_column, str) else default_id
            if suite.answer_type == "math":
                example = _math_example(problem_id, suite, row, columns)
            else:
                example = choice_example(name, problem_id, row, columns, seed=seed, shuffle=shuffle)
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


def _math_example(problem_id: str, suite: Suite, row: Mapping[str, Any], columns: Mapping[str, Any]) -> Example:
    prompt = required_text(row, columns["prompt"]).strip()
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
    return Example(id=problem_id, prompt=prompt, demonstrations=[], answer=answer)


