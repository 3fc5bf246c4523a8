"""The reward function signature shared by every reward, built-in or brought by a user."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# fn(prompts, completions, answer, **columns) -> one score per completion; None = not applicable
# (counted as 0 when rewards are combined). The same shape as a TRL reward function.
RewardFn = Callable[..., list[float | None]]


def completion_text(completion: Any) -> str:
    """The text of one completion: a plain string, or a TRL chat completion (list of messages).

    TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``; the
    answer is in the last message.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    if completion is None:
        return ""
    return str(completion)
