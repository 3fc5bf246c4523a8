"""Math answer reward: extract the final answer, check it against the gold with math-verify.

Extraction happens here (cheap regexes); parsing and comparison happen in the reward worker under a
hard time limit, because sympy can hang on adversarial output and math-verify's own timeout only
works in the main thread.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from hybridrft.data.answers import gsm8k_final_answer, last_boxed
from hybridrft.rewards.base import completion_text
from hybridrft.rewards.counters import COUNTERS
from hybridrft.rewards.timeout import RewardTimeout, RewardWorkerStartError, call_with_time_limit

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
_MATCH_TASK = "hybridrft.rewards.verify_task:answers_match"

# "The answer is 42.", "Final answer: $x^2$", "answer = 7"; `is\b` leaves "isn't" alone.
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is\b|:|=)\s*:?\s*(?P<answer>[^\n]*)", re.IGNORECASE)
# A sentence ends at a period followed by a space; "3.5" keeps its period.
_SENTENCE_END = re.compile(r"\.\s")
# "18 apples", "$3.50 dollars": a plain number followed by unit words; the words are not the answer
# (and would turn into symbols once parsed as LaTeX).
_NUMBER_WITH_UNITS = re.compile(r"^(?P<number>-?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z].*$")


def _clean_plain_answer(text: str) -> str | None:
    """Tidy an answer written in prose: first line; no bold, delimiters, units or final period."""
    lines = text.strip().splitlines()
    answer = lines[0] if lines else ""
    answer = answer.replace("**", "").strip()
    answer = _SENTENCE_END.split(answer, maxsplit=1)[0].strip().rstrip(".").strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2].strip()
    if answer.count("$") == 1 and answer.startswith("$"):
        answer = answer[1:].strip()  # a currency sign, not a math delimiter
    elif len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    units = _NUMBER_WITH_UNITS.match(answer)
    if units:
        answer = units.group("number")
    return answer or None


def extract_answer(completion: str) -> str | None:
    """The final answer a completion gives, or None when it states none.

    Preference order: the last ``\\boxed{...}`` (the convention for MATH-style prompts), then a
    GSM8K ``#### x`` line, then a closing phrase such as "The answer is X" or "answer: X".
    """
    boxed = last_boxed(completion)
    if boxed:
        return boxed
    after_hashes = gsm8k_final_answer(completion)
    if after_hashes:
        answer = _clean_plain_answer(after_hashes)
        if answer:
            return answer
    phrases = list(_ANSWER_PHRASE.finditer(completion))
    if phrases:
        return _clean_plain_answer(phrases[-1].group("answer"))
    return None


def verify_answer(gold: str, prediction: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether ``prediction`` (a bare answer such as "0.5") equals ``gold`` per math-verify.

    Runs in the shared reward worker. Raises :class:`RewardTimeout` past ``timeout`` seconds.
    """
    return bool(call_with_time_limit(_MATCH_TASK, gold, prediction, timeout=timeout))


def _verify_whole_completion(gold: str, completion: str, *, timeout: float) -> bool:
    # No recognisable answer: math-verify's default extraction takes the last number/expression.
    return bool(
        call_with_time_limit(_MATCH_TASK, gold, completion, whole_completion=True, timeout=timeout)
    )


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _score_one(gold: str, text: str, timeout: float, require_answer: bool) -> float:
    """1.0 or 0.0; a failure scores 0.0 and is counted, never raised."""
    COUNTERS.add(calls=1)
    try:
        extracted = extract_answer(text)
        if extracted is not None:
            correct = verify_answer(gold, extracted, timeout=timeout)
        elif require_answer:
            correct = False
        else:
            correct = _verify_whole_completion(gold, text, timeout=timeout)
    except RewardWorkerStartError:
        raise  # a broken environment, not a bad completion: scoring 0 would hide it
    except RewardTimeout:
        COUNTERS.add(timeouts=1)
        logger.warning(
            "math reward timed out after %g s (gold %r, completion %r); scored 0",
            timeout,
            _shorten(gold),
            _shorten(text),
        )
        return 0.0
    except Exception as error:
        COUNTERS.add(errors=1)
        logger.warning(
            "math reward failed (gold %r, completion %r); scored 0: %s: %s",
            _shorten(gold),
            _shorten(text),
            type(error).__name__,
            error,
        )
        return 0.0
    return 1.0 if correct else 0.0


def math_answer_reward(
    prompts: list,
    completions: list,
    answer: list[str],
    *,
    verify_timeout: float = DEFAULT_TIMEOUT_S,
    require_answer: bool = True,
    **columns: Any,
) -> list[float]:
    """1.0 for each completion whose final answer math-verifies against its gold ``answer``.

    The final answer is the last ``\\boxed{}``, a ``#### x`` line, or an "The answer is X" phrase.
    With ``require_answer=False`` (the registered ``math_lenient``) a completion that states none is
    checked on its last number or expression instead, as TRL's accuracy reward does; the default is
    strict so that a completion cut off mid-sentence never scores by the luck of its last number.
    A check that raises or runs past ``verify_timeout`` seconds scores 0.0 and is counted in
    :data:`hybridrft.rewards.counters.COUNTERS`; one bad completion never stops training.
    """
    if len(answer) != len(completions):
        raise ValueError(
            f"math reward got {len(completions)} completions but {len(answer)} gold answers"
        )
    scores = []
    for completion, gold in zip(completions, answer):
        gold_text = "" if gold is None else str(gold).strip()
        if not gold_text:
            logger.warning("math reward: empty gold answer; scored 0")
            scores.append(0.0)
            continue
        scores.append(_score_one(gold_text, completion_text(completion), verify_timeout, require_answer))
    return scores


def lenient_math_answer_reward(prompts: list, completions: list, answer: list[str], **columns: Any) -> list[float]:
    """``math_answer_reward`` that falls back to the last number or expression of the completion."""
    return math_answer_reward(prompts, completions, answer, require_answer=False, **columns)
