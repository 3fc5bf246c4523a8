"""Rewards: math answer (math-verify), multiple-choice letter, format; registry; TRL-compatible signature.

Every reward is ``fn(prompts, completions, answer, **columns) -> list[float | None]``.

The names below are imported on first access (PEP 562) rather than eagerly: the reward worker is a
fresh interpreter that imports this package on its way to ``hybridrft.rewards._worker``, and it
must stay small and quick to start, so importing the package alone pulls in nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "RewardFn": "hybridrft.rewards.base",
    "completion_text": "hybridrft.rewards.base",
    "choice_answer_reward": "hybridrft.rewards.choice_reward",
    "extract_choice_letter": "hybridrft.rewards.choice_reward",
    "normalize_choice_letter": "hybridrft.rewards.choice_reward",
    "RewardCounters": "hybridrft.rewards.counters",
    "reward_counters": "hybridrft.rewards.counters",
    "reset_reward_counters": "hybridrft.rewards.counters",
    "boxed_format_reward": "hybridrft.rewards.format_reward",
    "has_boxed_format": "hybridrft.rewards.format_reward",
    "extract_answer": "hybridrft.rewards.math_reward",
    "math_answer_reward": "hybridrft.rewards.math_reward",
    "lenient_math_answer_reward": "hybridrft.rewards.math_reward",
    "verify_answer": "hybridrft.rewards.math_reward",
    "REWARDS": "hybridrft.rewards.registry",
    "UnknownRewardError": "hybridrft.rewards.registry",
    "combine_rewards": "hybridrft.rewards.registry",
    "get_reward": "hybridrft.rewards.registry",
    "register_reward": "hybridrft.rewards.registry",
    "RewardTimeout": "hybridrft.rewards.timeout",
    "RewardWorkerError": "hybridrft.rewards.timeout",
    "RewardWorkerStartError": "hybridrft.rewards.timeout",
    "TimeLimitedWorker": "hybridrft.rewards.timeout",
    "call_with_time_limit": "hybridrft.rewards.timeout",
    "shared_worker": "hybridrft.rewards.timeout",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from hybridrft.rewards.base import RewardFn, completion_text
    from hybridrft.rewards.choice_reward import choice_answer_reward, extract_choice_letter, normalize_choice_letter
    from hybridrft.rewards.counters import RewardCounters, reset_reward_counters, reward_counters
    from hybridrft.rewards.format_reward import boxed_format_reward, has_boxed_format
    from hybridrft.rewards.math_reward import extract_answer, lenient_math_answer_reward, math_answer_reward, verify_answer
    from hybridrft.rewards.registry import (
        REWARDS,
        UnknownRewardError,
        combine_rewards,
        get_reward,
        register_reward,
    )
    from hybridrft.rewards.timeout import (
        RewardTimeout,
        RewardWorkerError,
        RewardWorkerStartError,
        TimeLimitedWorker,
        call_with_time_limit,
        shared_worker,
    )


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
