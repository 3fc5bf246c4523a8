"""Format reward: one boxed final answer, after the reasoning.

It rewards the shape the math reward relies on (one unambiguous ``\\boxed{}`` answer) and
discourages answering first and reasoning after, or hedging with several boxes.
"""

from __future__ import annotations

import re
from typing import Any

from hybridrft.data.answers import last_boxed
from hybridrft.rewards.base import completion_text

# The box must start in the last 30% of the text: at least 70% of it is reasoning before it.
ANSWER_TAIL_FRACTION = 0.3
# Same commands that `last_boxed` reads; `(?![A-Za-z])` keeps `\boxeda` from counting.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def has_boxed_format(text: str) -> bool:
    """Exactly one ``\\boxed{...}``, braces balanced and content non-empty, in the last 30%."""
    text = text.strip()
    boxes = list(_BOX_COMMAND.finditer(text))
    if len(boxes) != 1:
        return False
    box = boxes[0]
    if not text[box.end() :].lstrip().startswith("{"):
        return False  # `\boxed 5` is valid LaTeX but not the format asked for
    if last_boxed(text) is None:
        return False  # unbalanced (a truncated answer) or empty
    return box.start() >= (1.0 - ANSWER_TAIL_FRACTION) * len(text)


def boxed_format_reward(prompts: list, completions: list, **columns: Any) -> list[float]:
    """1.0 per completion with one balanced ``\\boxed{}`` answer at its end (has_boxed_format)."""
    return [1.0 if has_boxed_format(completion_text(c)) else 0.0 for c in completions]
