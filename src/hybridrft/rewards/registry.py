"""Reward functions by name, and the weighted combination a trainer uses every step.

Configs name rewards as strings: a built-in (``"math"``, ``"format"``, ``"choice"``), a name a user
registered with :func:`register_reward`, or ``"package.module:function"`` for any TRL-style function.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hybridrft.rewards.base import RewardFn
from hybridrft.rewards.choice_reward import choice_reward
from hybridrft.rewards.counters import (
    COUNTERS,
    RewardCounters,
    reset_reward_counters,
    reward_counters,
)
from hybridrft.rewards.format_reward import boxed_format_reward
from hybridrft.rewards.math_reward import lenient_math_answer_reward, math_answer_reward
from hybridrft.rewards.timeout import RewardWorkerStartError

__all__ = [
    "REWARDS",
    "RewardCounters",
    "RewardFn",
    "UnknownRewardError",
    "combine_rewards",
    "get_reward",
    "register_reward",
    "reset_reward_counters",
    "reward_counters",
]

logger = logging.getLogger(__name__)

REWARDS: dict[str, RewardFn] = {
    "math": math_answer_reward,
    "math_lenient": lenient_math_answer_reward,
    "format": boxed_format_reward,
    "choice": choice_reward,
}


class UnknownRewardError(KeyError):
    """No reward by that name; the message lists the known names and the closest one."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as a repr
        return str(self.args[0])


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator that makes a reward function available to configs under ``name``."""
    if not name or ":" in name:
        raise ValueError(f"reward name must be non-empty and without ':', got {name!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        existing = REWARDS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"reward {name!r} is already registered ({existing!r})")
        REWARDS[name] = fn
        return fn

    return decorator


def _import_reward(reference: str) -> RewardFn:
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"cannot import reward function {reference!r}: {error}") from error
    if not callable(target):
        raise TypeError(f"reward {reference!r} is {type(target).__name__}, not a function")
    return target


def get_reward(name: str) -> RewardFn:
    """The reward function called ``name``, or imported from ``"package.module:function"``.

    Raises:
        UnknownRewardError (a KeyError): unknown name; the message suggests the closest one.
        ImportError: a ``module:function`` reference that cannot be imported.
    """
    if ":" in name:
        return _import_reward(name)
    if name in REWARDS:
        return REWARDS[name]
    known = sorted(REWARDS)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownRewardError(
        f"unknown reward {name!r}{hint} Known rewards: {', '.join(known)}; "
        "or give 'package.module:function' for your own"
    )


_reported_failures: set[str] = set()
_reported_lock = threading.Lock()


def _report_failure(name: str, size: int, error: Exception) -> None:
    # One line per failing batch; the traceback only the first time per reward, so a function
    # that fails every step does not flood the log.
    with _reported_lock:
        first = name not in _reported_failures
        _reported_failures.add(name)
    logger.warning(
        "reward %r raised on a batch of %d completions; all scored 0: %s: %s",
        name,
        size,
        type(error).__name__,
        error,
        exc_info=error if first else None,
    )


def _finite_score(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (an int, a float, a numpy or 0-d torch scalar),
    else None. Text is never a score, even text that reads as one ("1")."""
    if isinstance(value, (str, bytes, bytearray)):
        return None
    try:
        score = float(value)
    except Exception:  # TypeError for an object, OverflowError for a huge int, whatever __float__ raises
        return None
    return score if math.isfinite(score) else None


def _shorten_repr(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_scores(name: str, raw: Any, size: int) -> list[float]:
    """Validate one function's output: one score per completion, each a float.

    ``None`` means "not applicable" and scores 0.0 without counting. A score that is NaN, infinite
    or not a number (text, an object) scores 0.0 and counts one error each, with one warning for
    the batch. An output that is no list, or has the wrong length, is a bug and raises ValueError.
    """
    if raw is None or isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        raise ValueError(f"reward {name!r} returned {type(raw).__name__}, not a list of scores")
    if len(raw) != size:
        raise ValueError(f"reward {name!r} returned {len(raw)} scores for {size} completions")
    scores = []
    bad = []
    for value in raw:
        if value is None:
            scores.append(0.0)
            continue
        score = _finite_score(value)
        if score is None:
            bad.append(value)
            score = 0.0
        scores.append(score)
    if bad:
        COUNTERS.add(errors=len(bad))
        logger.warning(
            "reward %r returned %d of %d scores that are not finite numbers (first: %s); "
            "those scored 0",
            name,
            len(bad),
            size,
            _shorten_repr(bad[0]),
        )
    return scores


def combine_rewards(
    fns: Sequence[tuple[str, RewardFn, float]],
    prompts: list,
    completions: list,
    answers: list[str],
    columns: dict[str, list] | None = None,
) -> tuple[list[float], dict[str, list[float]]]:
    """Score a batch with every ``(name, fn, weight)`` and sum the weighted scores.

    Each function is called once on the whole batch, TRL-style:
    ``fn(prompts=..., completions=..., answer=..., **columns)``. None scores count as 0.0. A
    function that raises scores 0.0 on the whole batch and counts one error (training goes on); a
    score that is NaN, infinite or not a number (``"1"``, an object) scores 0.0 and counts one
    error per score, with one warning per function and batch. A function that returns no list,
    or the wrong number of scores, is a bug and raises ValueError naming it.

    Returns:
        (weighted total per completion, {name: per-completion scores}).
    """
    size = len(completions)
    reserved = ("prompts", "completions", "answer")
    extra = {k: v for k, v in (columns or {}).items() if k not in reserved}
    names = [name for name, _, _ in fns]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    totals = [0.0] * size
    per_reward: dict[str, list[float]] = {}
    for name, fn, weight in fns:
        try:
            raw = fn(prompts=prompts, completions=completions, answer=answers, **extra)
        except RewardWorkerStartError:
            raise  # the environment is broken: every score would be wrong
        except Exception as error:
            COUNTERS.add(errors=1)
            _report_failure(name, size, error)
            raw = [0.0] * size
        scores = _as_scores(name, raw, size)
        per_reward[name] = scores
        totals = [total + weight * score for total, score in zip(totals, scores)]
    return totals, per_reward
