"""Multiple-choice reward: the option letter a completion picks, compared with the gold letter.

The letter is read, in order of preference, from the last ``\\boxed{X}`` (the format the evaluation
prompt asks for), then the last "the answer is (X)" / "Answer: X" phrase, then a standalone letter
that ends the completion. A last box that holds something other than a letter is taken as the
answer and scores 0; an earlier box or phrase is never used instead (the model changed its mind).
"""

from __future__ import annotations

import logging
import re
import string
from typing import Any

from hybridrft.data.answers import last_boxed
from hybridrft.rewards.base import completion_text

logger = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase

# LaTeX wrappers a model may put around the letter inside the box: \text{B}, \textbf{(B)}, \mathrm{B}.
_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# Box content: "B", "(B)", "B.", "B) Paris", "B: Paris" (a letter, then nothing or a separator).
_BOXED_LETTER = re.compile(r"^\(?\s*([A-Za-z])\s*\)?(?:[.:)]|\s|$)")
# "The answer is (C)", "answer: **D**", "Final Answer: B", "the correct answer is option A".
# Each optional separator owns the whitespace after it (`\s*(?:[:]\s*)?`, not `\s*[:]?\s*`):
# three adjacent `\s*` split a run of n spaces in O(n^2) ways, so a failing match cost O(n^3) and
# "answer" followed by 10,000 spaces took hours (tests/test_rewards_hostile.py).
_ANSWER_PHRASE = re.compile(
    r"(?i:answer)(?:\s+(?i:is))?\s*(?:[:\uff1a]\s*)?(?:(?:\*\*|\$)\s*)?(?:(?i:option|choice)\s+)?"
    r"\(?([A-Z])\)?(?![A-Za-z0-9])"
)
# A final standalone letter: "...\n\nB", "... (C)", "**D**", "so the choice is C."
_FINAL_LETTER = re.compile(r"(?:^|[\s(*:])\(?([A-Z])\)?[.*]*\s*$")


def _valid(letter: str | None, valid_letters: str | None) -> str | None:
    if letter is None:
        return None
    letter = letter.upper()
    return letter if valid_letters is None or letter in valid_letters else None


def extract_choice_letter(text: str, num_choices: int | None = None) -> str | None:
    """The option letter a completion chooses, or None when it names none.

    ``num_choices`` (if given) limits the letters to the first ``num_choices`` of the alphabet, so
    "Answer: I think ..." is not read as option I of a four-option question.
    """
    valid = LETTERS[:num_choices] if num_choices else None
    boxed = last_boxed(text)
    if boxed is not None:
        content = _WRAPPER.sub(r"\1", boxed).replace("$", "").replace("*", "").strip()
        match = _BOXED_LETTER.match(content)
        return _valid(match.group(1) if match else None, valid)
    for match in reversed(list(_ANSWER_PHRASE.finditer(text))):
        letter = _valid(match.group(1), valid)
        if letter is not None:
            return letter
    match = _FINAL_LETTER.search(text.strip())
    return _valid(match.group(1) if match else None, valid)


def normalize_choice_letter(gold: Any) -> str | None:
    """A gold answer such as "B", " b ", "(B)" as the upper-case letter, or None if it is none."""
    text = "" if gold is None else str(gold).strip().strip("()").strip().upper()
    return text if len(text) == 1 and text in LETTERS else None


def choice_reward(
    prompts: list,
    completions: list,
    answer: list[str],
    *,
    num_choices: list[int] | None = None,
    **columns: Any,
) -> list[float]:
    """1.0 for each completion whose chosen letter equals its gold letter (``answer``), else 0.0.

    ``num_choices`` (an optional per-completion column) restricts the letters a completion may
    pick. A gold answer that is not a single letter scores 0 with a warning.
    """
    if len(answer) != len(completions):
        raise ValueError(f"choice reward got {len(completions)} completions but {len(answer)} gold answers")
    counts = list(num_choices) if num_choices is not None else [None] * len(completions)
    scores = []
    for completion, gold, count in zip(completions, answer, counts):
        gold_letter = normalize_choice_letter(gold)
        if gold_letter is None:
            logger.warning("choice reward: gold answer %r is not an option letter; scored 0", gold)
            scores.append(0.0)
            continue
        chosen = extract_choice_letter(completion_text(completion), count)
        scores.append(1.0 if chosen == gold_letter else 0.0)
    return scores


# The package exports the function under this name: `hybridrft.rewards.choice_reward` is this module.
choice_answer_reward = choice_reward
