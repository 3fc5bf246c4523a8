"""Multiple-choice questions: options in a seeded shuffled order, labelled A, B, C, ...

The order depends only on the seed and the problem's key (benchmark name and problem id), never
on which other problems are evaluated or in which batch, so a resumed or shortened evaluation shows
every question exactly as the first run did.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

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
