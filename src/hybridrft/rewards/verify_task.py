"""math-verify calls that run inside the reward worker (see :mod:`hybridrft.rewards.timeout`).

Only the worker imports this module. math-verify's own SIGALRM timeouts are switched off
(``parsing_timeout=None``, ``timeout_seconds=None``) because they fail outside the main thread;
the worker's hard limit replaces them.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from math_verify import parse, verify


class _DropTimeoutDisabledWarning(logging.Filter):
    # math-verify warns once that its timeout is off; here that is deliberate, not news.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropTimeoutDisabledWarning) for f in target.filters):
            target.addFilter(_DropTimeoutDisabledWarning())


def _has_expression(parsed: list) -> bool:
    # parse() appends the raw matched string as a fallback; only a non-string means it parsed.
    return any(not isinstance(item, str) for item in parsed)


def parse_answer(text: str) -> list:
    """Parse a bare answer ("14", "1,000", "\\frac{1}{2}", "x^2+1", "$18$").

    math-verify extracts LaTeX only from math delimiters, so the answer is wrapped in ``$...$``;
    when that yields no expression, the plain-text extractor gets a try.
    """
    _quiet_math_verify()
    inner = text.strip()
    if len(inner) >= 2 and inner.startswith("$") and inner.endswith("$"):
        inner = inner.strip("$").strip()
    parsed = parse(f"${inner}$", parsing_timeout=None)
    if not _has_expression(parsed):
        plain = parse(inner, parsing_timeout=None)
        if _has_expression(plain) or not parsed:
            parsed = plain
    return parsed


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    # Every rollout of a prompt shares its gold answer: parse it once per worker.
    return tuple(parse_answer(gold))


def answers_match(gold: str, prediction: str, *, whole_completion: bool = False) -> bool:
    """math-verify's ``verify(gold, prediction)`` (gold first: the comparison is not symmetric).

    ``whole_completion`` hands the prediction to math-verify's default extraction (the last
    number or expression in the text) instead of parsing it as a bare answer.
    """
    _quiet_math_verify()
    gold_parsed = list(_parse_gold(gold))
    if not gold_parsed:
        raise ValueError(f"gold answer {gold!r} could not be parsed")
    if whole_completion:
        predicted = parse(prediction, parsing_timeout=None)
    else:
        predicted = parse_answer(prediction)
    if not predicted:
        return False
    return verify(gold_parsed, predicted, timeout_seconds=None)
