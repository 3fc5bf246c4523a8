"""Hostile completions: every built-in reward returns a score, in time, and leaves nothing behind.

Property-based (hypothesis): completions built from deep nesting (``\\frac{``, ``{``, ``(`` ... to
depth 2000, balanced or not), numbers of up to 200,000 digits, ``^`` towers, unbalanced braces,
control characters (``\\x00``, lone surrogates), long runs of random LaTeX commands and long runs of
whitespace after "answer". For each built-in reward in the registry and each generated batch:

* the reward returns one float per completion, 0.0 or 1.0 (the built-ins score nothing else);
* no exception escapes;
* the call takes at most ``len(batch) * (time limit + MARGIN_S)`` (see TIME_LIMITS_S);
* no thread and no child process is left behind: the only child may be the shared reward worker
  (a fresh one after a timeout), and the one it replaced has been reaped, not left a zombie.

Real rewards, real worker process, nothing mocked. Derandomized, so every run (and CI) tries the
same examples; the explicit ``@example`` cases run first every time.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil  # installed with accelerate, a dependency of hybridrft
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hybridrft.rewards import REWARDS, math_answer_reward, shared_worker, verify_answer
from hybridrft.rewards.math_reward import DEFAULT_TIMEOUT_S

# The math rewards check each completion in the reward worker under a hard limit, `verify_timeout`
# (default DEFAULT_TIMEOUT_S = 5 s, what training uses). This file passes a shorter one, since most
# hostile completions use it up and the bound below is relative to the limit; one test at the end
# runs the default. `format` and `choice` have no limit: they are regexes and one brace scan in
# the calling process, linear in the length of the text, so they get the margin alone.
LIMIT_S = 0.5
TIME_LIMITS_S = {"math": LIMIT_S, "math_lenient": LIMIT_S, "format": 0.0, "choice": 0.0}
# Time per completion that the limit does not cover: after a timeout the worker is killed and the
# next check starts a fresh one (a new interpreter importing sympy and math-verify: about 0.2 s on
# an idle 2-core machine, several times that when other jobs keep its cores busy; start-up is
# deliberately outside the limit), and the completion (up to a few hundred KB here) goes through a
# pipe and through the extraction regexes first (milliseconds). 3 s covers that with room for a
# loaded CI machine and for sandboxed hosts where starting a process is slow (about 2.5 s per
# restart was measured under gVisor).
MARGIN_S = 3.0
GOLD = {"choice": "B"}  # the math rewards and `format` get "1"

HANGING_TOWER = "\\boxed{9^{9^{9^{9}}}}"  # sympy never finishes evaluating it

# --- strategies ---------------------------------------------------------------------------------

_CLOSERS = {
    "\\frac{": "}{2}",
    "{": "}",
    "(": ")",
    "[": "]",
    "\\sqrt{": "}",
    "\\left(": "\\right)",
    "^{": "}",
    "\\boxed{": "}",
    "\\text{": "}",
    "$": "$",
}


@st.composite
def nested(draw) -> str:
    """An opener repeated to depth 1..2000; closed fully, partly, not at all or over-closed."""
    opener = draw(st.sampled_from(sorted(_CLOSERS)))
    depth = draw(st.integers(1, 2000) | st.sampled_from([500, 1000, 2000]))
    closed = draw(st.sampled_from(["all", "some", "none", "extra"]))
    closers = {"all": depth, "some": draw(st.integers(0, depth)), "none": 0, "extra": depth + 3}[closed]
    core = draw(st.sampled_from(["1", "x", "", "\\pi", "9^9", "-"]))
    return opener * depth + core + _CLOSERS[opener] * closers


@st.composite
def huge_number(draw) -> str:
    """1..200,000 digits, plain or as a decimal, fraction, power, factorial, with commas..."""
    # 4300 digits is CPython's limit for int(str); hypothesis favours small values, so the large
    # lengths are also drawn on their own
    length = draw(st.integers(1, 200_000) | st.sampled_from([4300, 4301, 50_000, 200_000]))
    pattern = draw(st.text("0123456789", min_size=1, max_size=6))
    digits = (pattern * (length // len(pattern) + 1))[:length]
    form = draw(
        st.sampled_from(
            ["{d}", "-{d}", "{d}.{d}", "0.{d}", "{d}e{e}", "{d}!", "\\frac{{{d}}}{{{d}}}", "{d}^{{{d}}}", "{c}"]
        )
    )
    commas = ",".join(digits[i : i + 3] for i in range(0, len(digits), 3))
    return form.format(d=digits, e=digits[:6], c=commas)


@st.composite
def tower(draw) -> str:
    height = draw(st.integers(1, 300))
    base = draw(st.sampled_from(["9", "2", "10", "x", "99999"]))
    if draw(st.booleans()):
        return f"{base}^" * height + base
    return f"{base}^{{" * height + base + "}" * height


_BRACE_TOKENS = ["{", "}", "\\{", "\\}", "\\boxed", "\\boxed{", "\\fbox{", "\\", "$", "1", " ", "\\boxed "]
unbalanced_braces = st.lists(st.sampled_from(_BRACE_TOKENS), max_size=2000).map("".join)

_CONTROL = [chr(c) for c in range(32)] + ["\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\ufffd", "\ud800", "\udfff"]
control_chars = st.text(st.sampled_from(_CONTROL) | st.characters(), max_size=2000)

_LATEX_TOKENS = [
    "\\frac", "\\dfrac", "\\sqrt", "\\sqrt[3]", "\\boxed", "\\fbox", "\\left(", "\\right)", "\\left\\{",
    "\\right.", "\\begin{pmatrix}", "\\end{pmatrix}", "\\begin{cases}", "\\end{cases}", "&", "\\\\",
    "\\int", "\\sum_{", "\\prod", "\\lim_{x\\to", "\\infty", "^", "_", "{", "}", "(", ")", "[", "]",
    "\\cdot", "\\times", "\\div", "\\pm", "=", "<", "\\le", "\\ne", "+", "-", "/", "!", "\\%", "%",
    "\\$", "$", "$$", "\\(", "\\)", "\\[", "\\]", "\\text{", "\\mathrm{", "\\mathbb{R}", "\\pi",
    "\\alpha", "\\sin", "\\log", "\\in", "\\cup", "\\emptyset", "\\overline{", "\\vec{", "\\binom",
    "\\choose", "\\over", "\\ldots", "\\,", "\\!", "~", "'", "x", "y", "1", "2", "9", "0.5", "1,000",
    " ", "\n", ",", ".", "####", "The answer is ", "answer: ", "Answer: (", "option ",
]
random_latex = st.lists(st.sampled_from(_LATEX_TOKENS), max_size=3000).map("".join)


@st.composite
def answer_then_whitespace(draw) -> str:
    """ "answer" and a long run of whitespace (an old catastrophic-backtracking case in `choice`)."""
    space = draw(st.sampled_from([" ", "\n", "\t", " \n", "\u3000"]))
    run = space * draw(st.integers(1, 20_000) | st.sampled_from([5_000, 20_000]))
    return draw(st.sampled_from(["answer", "Answer is", "answer:", "The answer"])) + run + draw(
        st.sampled_from(["x", "", "**", "(", "option", "B"])
    )


family = st.one_of(nested(), huge_number(), tower(), unbalanced_braces, control_chars, random_latex, answer_then_whitespace())


@st.composite
def completion(draw):
    """One to three families glued together, maybe boxed, maybe as a TRL chat completion."""
    text = "".join(draw(st.lists(family, min_size=1, max_size=3)))
    if draw(st.booleans()):
        text = draw(st.sampled_from(["\\boxed{{{}}}", "The answer is {}", "#### {}", "Reasoning. {}"])).format(text)
    if draw(st.booleans()):
        return [{"role": "assistant", "content": text}]
    return text


batches = st.lists(completion(), min_size=1, max_size=3)

EXAMPLES = [
    ["\\boxed{" + "\\frac{" * 2000 + "1" + "}{2}" * 2000 + "}"],
    ["\\boxed{" + "{" * 2000 + "1", "(" * 2000 + "1" + ")" * 2000],
    ["\\boxed{" + "7" * 200_000 + "}", "The answer is " + "7" * 200_000],
    [HANGING_TOWER],
    ["answer" + " " * 20_000 + "x", "Answer:" + "\n" * 20_000],
    ["\x00" * 1000 + "\\boxed{1}\x00", "}{" * 1000 + "\\boxed{\\boxed{\\boxed{"],
]

# --- what a call may leave behind -----------------------------------------------------------------


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _threads() -> set[int]:
    return {thread.ident for thread in threading.enumerate()}


class _State:
    def __init__(self) -> None:
        self.worker = shared_worker().pid
        self.children = _children()
        self.threads = _threads()


def _assert_nothing_left_behind(before: _State) -> None:
    after = _State()
    new_threads = after.threads - before.threads
    assert not new_threads, f"threads left behind: {new_threads}"
    # The only new child may be the worker's replacement; the one it replaced must be reaped.
    left = (after.children - {after.worker}) - (before.children - {before.worker})
    assert not left, f"child processes left behind: {left} (worker {after.worker})"
    if after.worker is not None:
        assert psutil.Process(after.worker).status() != psutil.STATUS_ZOMBIE


class _Overtime(Exception):
    pass


def _raise_overtime(signum, frame):
    raise _Overtime


@contextmanager
def _interrupt_after(seconds: float) -> Iterator[None]:
    """Raise _Overtime in this (main) thread after ``seconds``, so that a reward that hangs fails
    the test at once instead of blocking it for hours (a regex's matching loop checks for signals).
    pytest-timeout's own alarm, if set, is put back afterwards with the time it had left."""
    old_handler = signal.signal(signal.SIGALRM, _raise_overtime)
    old_left, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_left:
            left = max(old_left - (time.monotonic() - start), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _check_batch(name: str, batch: list) -> None:
    before = _State()
    size = len(batch)
    budget = size * (TIME_LIMITS_S[name] + MARGIN_S)
    start = time.monotonic()
    try:
        with _interrupt_after(budget + 1.0):
            scores = REWARDS[name](
                prompts=[None] * size,
                completions=batch,
                answer=[GOLD.get(name, "1")] * size,
                verify_timeout=LIMIT_S,
            )
    except _Overtime:
        shared_worker().close()  # it may hold a task's unread answer: the next call starts afresh
        pytest.fail(f"{name} still running after {budget + 1.0:.1f} s on {size} completions (budget {budget:.1f} s)")
    elapsed = time.monotonic() - start
    assert isinstance(scores, list) and len(scores) == size
    assert all(type(score) is float and score in (0.0, 1.0) for score in scores), scores
    assert elapsed <= budget, f"{name} took {elapsed:.2f} s on {size} completions (budget {budget:.1f} s)"
    _assert_nothing_left_behind(before)


# --- the tests ----------------------------------------------------------------------------------


def test_every_builtin_reward_has_a_time_limit_here():
    builtins = {name for name, fn in REWARDS.items() if fn.__module__.startswith("hybridrft.rewards.")}
    assert builtins == set(TIME_LIMITS_S)
    assert LIMIT_S <= DEFAULT_TIMEOUT_S


# The math rewards cost up to LIMIT_S + a worker restart per completion, so they get fewer examples.
@pytest.mark.parametrize(("name", "max_examples"), [("format", 100), ("choice", 100), ("math", 15), ("math_lenient", 15)])
def test_builtin_reward_survives_hostile_completions(name, max_examples):
    verify_answer("1", "1")  # a running worker, so that its start-up is not counted as a leftover
    before = _State()

    @settings(
        max_examples=max_examples,
        deadline=None,  # the time bound is asserted per call, relative to the reward's limit
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=batches)
    def check(batch):
        _check_batch(name, batch)

    for batch in EXAMPLES:
        check = example(batch=batch)(check)
    check()
    verify_answer("1", "1")  # the worker still answers (restarted if the last check timed out)
    _assert_nothing_left_behind(before)


def test_math_reward_at_its_default_limit_on_a_hanging_completion():
    verify_answer("1", "1")
    before = _State()
    start = time.monotonic()
    assert math_answer_reward([None], [HANGING_TOWER], ["1"]) == [0.0]
    assert time.monotonic() - start <= DEFAULT_TIMEOUT_S + MARGIN_S
    verify_answer("1", "1")  # leave a running worker, as found
    _assert_nothing_left_behind(before)
