"""Multiple-choice questions: options in a seeded shuffled order, labelled A, B, C, ..., and the
Example made from one benchmark row (question, options, gold option).

The order depends only on the seed and the problem's key (benchmark name and problem id), never
on which other problems are evaluated or in which batch, so a resumed or shortened evaluation shows
every question exactly as the first run did.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hybridrft.data import Example
from hybridrft.data.adapters import required_text

LETTERS = string.ascii_uppercase

CHOICE_INSTRUCTION = (
    "Think step by step, then give the letter of the correct option in \\boxed{}, e.g. \\boxed{A}."
)


@dataclass(frozen=True)
class ChoiceQuestion:
    """Options as shown to the model and where the gold one went.

    ``permutation[i]`` is the index in the source order of the option shown under ``LETTERS[i]``.
    """

    options: list[str]
    permutation: list[int]
    gold_letter: str


def option_permutation(num_options: int, *, seed: int, key: str, shuffle: bool = True) -> list[int]:
    """A permutation of ``range(num_options)`` fixed by ``(seed, key)``; the identity without shuffle."""
    order = list(range(num_options))
    if shuffle:
        # random.Random seeds from a str through SHA-512: the same in every process and Python run.
        random.Random(f"{seed}/{key}").shuffle(order)
    return order


def arrange_options(options: list[str], gold_index: int, *, seed: int, key: str, shuffle: bool = True) -> ChoiceQuestion:
    """Shuffle ``options`` (seeded by ``seed`` and ``key``) and find the gold option's new letter."""
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 2 to {len(LETTERS)} options, got {len(options)}")
    if not 0 <= gold_index < len(options):
        raise ValueError(f"gold option index {gold_index} is out of range for {len(options)} options")
    permutation = option_permutation(len(options), seed=seed, key=key, shuffle=shuffle)
    return ChoiceQuestion(
        options=[options[i] for i in permutation],
        permutation=permutation,
        gold_letter=LETTERS[permutation.index(gold_index)],
    )


def choice_prompt(question: str, options: list[str]) -> str:
    """The question, a blank line, then one ``X. option`` line per option."""
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return question.strip() + "\n\n" + "\n".join(lines)


def options_and_labels(value: Any, column: str) -> tuple[list[str], list[str] | None]:
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


def gold_index(value: Any, options: list[str], labels: list[str] | None, column: str) -> int:
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


def choice_example(
    name: str, problem_id: str, row: Mapping[str, Any], columns: Mapping[str, Any], *, seed: int, shuffle: bool
) -> Example:
    """The Example of one multiple-choice row of benchmark ``name``: the question with its options
    (shuffled by ``seed`` and the problem's key) as the prompt, the gold option's letter as the answer.

    ``columns`` maps a role to its column: ``question``; ``choices`` with ``answer_index`` or
    ``answer``; or ``correct`` and ``incorrect`` (a list of columns).
    """
    question = required_text(row, columns["question"]).strip()
    if "choices" in columns:
        options, labels = options_and_labels(row.get(columns["choices"]), columns["choices"])
        gold = None
        index_column = columns.get("answer_index")
        if index_column and row.get(index_column) is not None:
            gold = row[index_column]
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(options):
                raise ValueError(f"field {index_column!r} = {gold!r} is not an option index (0..{len(options) - 1})")
        elif "answer" in columns:
            gold = gold_index(row.get(columns["answer"]), options, labels, columns["answer"])
        else:
            raise ValueError("no answer column")
    else:
        correct = required_text(row, columns["correct"])
        options = [correct] + [required_text(row, c) for c in columns["incorrect"]]
        gold = 0
    options = [option.strip() for option in options]
    arranged = arrange_options(options, gold, seed=seed, key=f"{name}/{problem_id}", shuffle=shuffle)
    return Example(
        id=problem_id,
        prompt=choice_prompt(question, arranged.options),
        demonstrations=[],
        answer=arranged.gold_letter,
        meta={"choices": arranged.options, "permutation": arranged.permutation, "num_choices": len(options)},
    )
