"""Rewards layer: answer extraction, math-verify through the time-limited worker, format reward,
registry and combination. Real math-verify and real worker processes; nothing is mocked."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

import psutil  # installed with accelerate, a dependency of hybridrft
import pytest

from hybridrft.rewards import (
    REWARDS,
    RewardTimeout,
    RewardWorkerError,
    TimeLimitedWorker,
    UnknownRewardError,
    boxed_format_reward,
    call_with_time_limit,
    combine_rewards,
    extract_answer,
    get_reward,
    math_answer_reward,
    register_reward,
    reset_reward_counters,
    reward_counters,
    shared_worker,
    verify_answer,
)

# sympy cannot finish evaluating this tower of powers: a real never-ending check.
HANGING_COMPLETION = "Powers grow fast, so the value is \\boxed{9^{9^{9^{9}}}}"


@pytest.fixture(autouse=True)
def _fresh_counters():
    reset_reward_counters()
    yield
    reset_reward_counters()


@pytest.fixture
def quick_worker():
    """A private worker with nothing preloaded (starts in well under a second)."""
    worker = TimeLimitedWorker(preload=())
    yield worker
    worker.close()


# --- extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so x = 2 and \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("The answer is 3, i.e. \\boxed{4}. Final: \\boxed{5}", "5"),
        ("Total: 2 + 16 = 18\n#### 18", "18"),
        ("#### 1,000\nI hope this helps", "1000"),
        ("Adding up, the answer is 42.", "42"),
        ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("**Answer:** 7", "7"),
        ("answer: 18 apples", "18"),
        ("The answer is $18.", "18"),
        ("The answer is 3.5", "3.5"),
        ("The answer is \\boxed{9}", "9"),
        ("I am not sure how to do this.", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


# --- math-verify through the worker ------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "prediction"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("1000", "1,000"),
        ("14", "14"),
        ("x^2+1", "1+x^2"),
        ("$\\frac{1}{2}$", "\\dfrac12"),
    ],
)
def test_verify_answer_accepts_equivalent_forms(gold, prediction):
    assert verify_answer(gold, prediction) is True


@pytest.mark.parametrize(
    ("gold", "prediction"), [("18", "17"), ("\\frac{1}{2}", "0.25"), ("x^2+1", "x^2")]
)
def test_verify_answer_rejects_wrong_answers(gold, prediction):
    assert verify_answer(gold, prediction) is False


def test_math_reward_scores_equivalent_forms_and_wrong_answers():
    cases = [
        ("We halve it: \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("Altogether \\boxed{1,000}", "1000", 1.0),
        ("She has 12 + 6 = 18 eggs.\n#### 18", "18", 1.0),
        ("Six times seven. The answer is 42.", "42", 1.0),
        ("Six times seven. The answer is 41.", "42", 0.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
        ("I cannot solve this problem.", "42", 0.0),
        ("", "42", 0.0),
        # No stated answer: strict by default, so a cut-off completion never scores by luck.
        ("3 + 4 = 7 apples, plus 5 gives 12", "12", 0.0),
    ]
    completions, golds, expected = map(list, zip(*cases))
    assert math_answer_reward([None] * len(cases), completions, golds) == expected
    counts = reward_counters()
    assert (counts["reward/calls"], counts["reward/errors"], counts["reward/timeouts"]) == (len(cases), 0, 0)


def test_lenient_math_reward_falls_back_to_the_last_number():
    # math-verify's default extraction takes the last number when no answer is stated
    completions = ["3 + 4 = 7 apples, plus 5 gives 12", "3 + 4 = 7 apples, plus 5 gives 12", "\\boxed{3}"]
    assert get_reward("math_lenient")([None] * 3, completions, ["12", "13", "3"]) == [1.0, 0.0, 1.0]


def test_math_reward_scores_a_failing_check_zero_and_counts_it():
    # A lone backslash is no answer math-verify can parse: the check raises in the worker.
    assert math_answer_reward([None, None], ["\\boxed{1}", "\\boxed{2}"], ["\\", "2"]) == [0.0, 1.0]
    counts = reward_counters()
    assert (counts["reward/calls"], counts["reward/errors"], counts["reward/timeouts"]) == (2, 1, 0)


def test_math_reward_accepts_chat_completions():
    completions = [[{"role": "assistant", "content": "It is \\boxed{4}"}]]
    assert math_answer_reward(["q"], completions, ["4"]) == [1.0]


def test_math_reward_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        math_answer_reward([None, None], ["1", "2"], ["1"])


# --- the hard time limit ------------------------------------------------------------------------


def test_time_limit_kills_a_slow_task_and_the_worker_recovers(quick_worker):
    assert quick_worker.call(pow, 2, 10, timeout=10) == 1024  # started and warm
    first_pid = quick_worker.pid
    start = time.monotonic()
    with pytest.raises(RewardTimeout):
        quick_worker.call(time.sleep, 10, timeout=0.5)
    assert time.monotonic() - start < 3.0
    assert quick_worker.call(pow, 3, 3, timeout=10) == 27
    assert quick_worker.pid != first_pid
    assert quick_worker.restarts == 1


def test_time_limit_holds_in_a_non_main_thread():
    outcome: dict[str, object] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            call_with_time_limit(time.sleep, 10, timeout=0.5)
        except RewardTimeout:
            outcome["timed_out_after"] = time.monotonic() - start
        outcome["scores"] = math_answer_reward(
            [None] * 3,
            ["\\boxed{\\frac{2}{4}}", HANGING_COMPLETION, "#### 7"],
            ["0.5", "1", "7"],
            verify_timeout=1.0,
        )

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert outcome["timed_out_after"] < 3.0
    assert outcome["scores"] == [1.0, 0.0, 1.0]
    assert reward_counters()["reward/timeouts"] == 1
    assert reward_counters()["reward/errors"] == 0


def test_worker_death_is_reported_and_the_worker_restarts(quick_worker):
    with pytest.raises(RewardWorkerError, match="died"):
        quick_worker.call(os._exit, 3, timeout=10)
    assert quick_worker.call(abs, -4, timeout=10) == 4


def test_worker_is_restarted_when_killed_while_idle(quick_worker):
    quick_worker.call(abs, 1, timeout=10)
    os.kill(quick_worker.pid, 9)
    time.sleep(0.2)
    assert quick_worker.call(abs, -2, timeout=10) == 2


def _wait_until_dead(pid: int, timeout: float = 10.0) -> None:
    """Wait until a killed child has exited, without reaping it (its Popen does that)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive {timeout} s after SIGKILL")


def test_killed_shared_worker_is_restarted_and_counted():
    completions = ["We halve it: \\boxed{\\frac{2}{4}}", "#### 7", "The answer is 41."]
    golds = ["0.5", "7", "42"]
    reward = [("math", get_reward("math"), 1.0)]
    assert combine_rewards(reward, [None] * 3, completions, golds)[1]["math"] == [1.0, 1.0, 0.0]
    old_pid = shared_worker().pid
    reset_reward_counters()
    os.kill(old_pid, signal.SIGKILL)
    _wait_until_dead(old_pid)

    totals, per_reward = combine_rewards(reward, [None] * 3, completions, golds)

    counters = reward_counters()
    assert per_reward["math"][1:] == [1.0, 0.0] and totals[1:] == [1.0, 0.0]
    # the first check reaches the new worker, or, where the kernel reports the death late (seen
    # under gVisor), it was already sent to the dying one: then it is an error scored 0, never an
    # exception, and the rest of the batch is checked by the new worker
    first_reached_new_worker = per_reward["math"][0] == 1.0 and counters["reward/errors"] == 0
    first_lost_with_old_worker = per_reward["math"][0] == 0.0 and counters["reward/errors"] == 1
    assert first_reached_new_worker or first_lost_with_old_worker, (per_reward, counters)
    assert shared_worker().pid not in (None, old_pid)
    assert old_pid not in {child.pid for child in psutil.Process().children()}  # reaped
    assert (counters["reward/calls"], counters["reward/timeouts"], counters["reward/worker_restarts"]) == (3, 0, 1)


def test_worker_killed_during_a_check_scores_it_zero_and_the_batch_goes_on():
    verify_answer("1", "1")  # the worker is up
    pid = shared_worker().pid
    reset_reward_counters()
    # The first check never ends on its own (limit 60 s); the kill lands while it runs.
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    start = time.monotonic()
    killer.start()
    try:
        scores = math_answer_reward(
            [None] * 3, [HANGING_COMPLETION, "\\boxed{2}", "#### 3"], ["1", "2", "3"], verify_timeout=60
        )
    finally:
        killer.cancel()
        killer.join()
    assert scores == [0.0, 1.0, 1.0]
    assert time.monotonic() - start < 30
    assert reward_counters() == {
        "reward/calls": 3,
        "reward/errors": 1,  # the check the kill interrupted (RewardWorkerError: the worker died)
        "reward/timeouts": 0,
        "reward/worker_restarts": 1,
    }


def test_restarts_after_timeouts_are_counted_too(quick_worker):
    quick_worker.call(abs, 1, timeout=10)
    with pytest.raises(RewardTimeout):
        quick_worker.call(time.sleep, 10, timeout=0.2)
    assert reward_counters()["reward/worker_restarts"] == 0  # restarted lazily, by the next call
    assert quick_worker.call(abs, -3, timeout=10) == 3
    assert reward_counters()["reward/worker_restarts"] == quick_worker.restarts == 1


def test_task_exception_is_re_raised_in_the_caller(quick_worker):
    with pytest.raises(ValueError, match="invalid literal"):
        quick_worker.call(int, "not a number", timeout=10)
    assert quick_worker.call("builtins:len", "abc", timeout=10) == 3


def test_tasks_must_be_importable_by_name(quick_worker):
    with pytest.raises(ValueError, match="importable"):
        quick_worker.call(lambda: 1, timeout=10)


def test_worker_does_not_import_torch_or_the_data_layer():
    loaded = call_with_time_limit(
        eval,
        "[m for m in __import__('sys').modules if m == 'torch' or m.startswith('hybridrft.data')]",
        timeout=30,
    )
    assert loaded == []


def test_worker_is_shared_across_calls():
    verify_answer("1", "1")
    from hybridrft.rewards import shared_worker

    pid = shared_worker().pid
    math_answer_reward([None] * 5, ["\\boxed{1}"] * 5, ["1"] * 5)
    assert shared_worker().pid == pid


# --- format reward ------------------------------------------------------------------------------

REASONING = "First we add the two numbers, then we divide the sum by two to get the mean. "


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (REASONING + "So the mean is \\boxed{\\frac{1}{2}}.", 1.0),
        (REASONING + "\\boxed{5}", 1.0),
        ([{"role": "assistant", "content": REASONING + "\\boxed{5}"}], 1.0),
        ("\\boxed{5} " + REASONING, 0.0),  # answer before the reasoning
        (REASONING + "\\boxed{4} or maybe \\boxed{5}", 0.0),  # two boxes
        (REASONING + "\\boxed{\\frac{1}{2}", 0.0),  # unbalanced (truncated)
        (REASONING + "\\boxed{}", 0.0),  # empty
        (REASONING + "\\boxed 5", 0.0),  # no braces
        (REASONING + "The answer is 5.", 0.0),  # no box
        ("", 0.0),
    ],
)
def test_boxed_format_reward(completion, expected):
    assert boxed_format_reward(["q"], [completion]) == [expected]


# --- registry and combination -------------------------------------------------------------------


def test_builtin_rewards_are_registered():
    assert get_reward("math") is math_answer_reward
    assert get_reward("format") is boxed_format_reward


def test_get_reward_suggests_the_closest_name():
    with pytest.raises(UnknownRewardError) as caught:
        get_reward("mth")
    message = str(caught.value)
    assert "did you mean 'math'" in message and "format" in message
    assert isinstance(caught.value, KeyError)


def test_get_reward_imports_module_function():
    assert get_reward("hybridrft.rewards.format_reward:boxed_format_reward") is boxed_format_reward
    with pytest.raises(ImportError, match="no_such_module"):
        get_reward("no_such_module:reward")


def test_register_reward():
    @register_reward("test_length")
    def length_reward(prompts, completions, **columns):
        return [float(len(c)) for c in completions]

    try:
        assert get_reward("test_length") is length_reward
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_length")(lambda prompts, completions, **kw: [])
    finally:
        REWARDS.pop("test_length")


def _constant_reward(value):
    def reward(prompts, completions, answer, **columns):
        return [value] * len(completions)

    return reward


def test_combine_rewards_weights_and_none():
    def maybe(prompts, completions, answer, **columns):
        return [None, 1.0]

    def uses_column(prompts, completions, answer, difficulty, **columns):
        return [float(d) for d in difficulty]

    totals, per_reward = combine_rewards(
        [
            ("math", math_answer_reward, 1.0),
            ("maybe", maybe, 0.5),
            ("difficulty", uses_column, 0.1),
        ],
        prompts=["q1", "q2"],
        completions=["The answer is \\boxed{3}", "I think \\boxed{5}"],
        answers=["3", "4"],
        columns={"difficulty": [2, 4]},
    )
    assert per_reward == {"math": [1.0, 0.0], "maybe": [0.0, 1.0], "difficulty": [2.0, 4.0]}
    assert totals == pytest.approx([1.2, 0.9])


def test_combine_rewards_scores_a_raising_function_zero_and_counts_it(caplog):
    def broken(prompts, completions, answer, **columns):
        raise RuntimeError("reward server unreachable")

    with caplog.at_level(logging.WARNING, logger="hybridrft.rewards.registry"):
        totals, per_reward = combine_rewards(
            [("constant", _constant_reward(1.0), 2.0), ("broken", broken, 1.0)],
            prompts=["q"] * 3,
            completions=["a", "b", "c"],
            answers=["1"] * 3,
        )
    assert totals == [2.0, 2.0, 2.0]
    assert per_reward["broken"] == [0.0, 0.0, 0.0]
    assert reward_counters()["reward/errors"] == 1
    assert "broken" in caplog.text and "reward server unreachable" in caplog.text


def test_combine_rewards_scores_non_finite_zero_and_counts_it():
    totals, _ = combine_rewards(
        [("nan", _constant_reward(float("nan")), 1.0)], ["q"], ["a"], ["1"]
    )
    assert totals == [0.0]
    assert reward_counters()["reward/errors"] == 1


class _NotANumber:
    """An object a reward function might return by mistake (no __float__)."""


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), float("-inf"), "1", _NotANumber(), [1.0], 10**400, complex(1, 0)],
    ids=["nan", "inf", "-inf", "text", "object", "list", "huge-int", "complex"],
)
def test_combine_rewards_scores_a_bad_score_zero_and_counts_it(bad, caplog):
    def mostly_fine(prompts, completions, answer, **columns):
        return [0.5, bad, None, 1]

    with caplog.at_level(logging.WARNING, logger="hybridrft.rewards.registry"):
        totals, per_reward = combine_rewards(
            [("mostly_fine", mostly_fine, 2.0), ("constant", _constant_reward(1.0), 1.0)],
            prompts=["q"] * 4,
            completions=["a", "b", "c", "d"],
            answers=["1"] * 4,
        )
    assert per_reward["mostly_fine"] == [0.5, 0.0, 0.0, 1.0]  # the others keep their scores
    assert all(type(score) is float for score in per_reward["mostly_fine"])
    assert totals == [2.0, 1.0, 1.0, 3.0]
    assert reward_counters()["reward/errors"] == 1  # the bad score; None is "not applicable"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'mostly_fine'" in warnings[0] and "1 of 4 scores" in warnings[0]


def test_combine_rewards_counts_every_bad_score_in_one_warning(caplog):
    import numpy as np

    def messy(prompts, completions, answer, **columns):
        return [float("nan"), np.float32(0.25), float("inf"), "0.5", None, np.float64("nan"), True, object()]

    with caplog.at_level(logging.WARNING, logger="hybridrft.rewards.registry"):
        totals, per_reward = combine_rewards([("messy", messy, 1.0)], ["q"] * 8, list("abcdefgh"), ["1"] * 8)
    assert per_reward["messy"] == [0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert all(math.isfinite(total) for total in totals)
    assert reward_counters()["reward/errors"] == 5
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'messy'" in warnings[0] and "5 of 8 scores" in warnings[0]


@pytest.mark.parametrize("output", [None, "1.0", 1.0, (s for s in [1.0])], ids=["None", "text", "float", "generator"])
def test_combine_rewards_rejects_an_output_that_is_no_list(output):
    with pytest.raises(ValueError, match="reward 'odd' returned .*, not a list of scores"):
        combine_rewards([("odd", lambda prompts, completions, answer, **kw: output, 1.0)], ["q"], ["a"], ["1"])


def test_combine_rewards_rejects_wrong_length():
    with pytest.raises(ValueError, match="'short' returned 1 scores for 2 completions"):
        combine_rewards(
            [("short", lambda prompts, completions, answer, **kw: [1.0], 1.0)],
            prompts=["q", "q"],
            completions=["a", "b"],
            answers=["1", "1"],
        )


def test_reward_counters_snapshot_and_reset():
    verify_answer("1", "1")  # a running worker: no restart below, whatever ran before
    reset_reward_counters()
    math_answer_reward([None], ["\\boxed{1}"], ["1"])
    assert reward_counters() == {
        "reward/calls": 1,
        "reward/errors": 0,
        "reward/timeouts": 0,
        "reward/worker_restarts": 0,
    }
    reset_reward_counters()
    assert reward_counters()["reward/calls"] == 0


def test_a_worker_that_cannot_start_is_an_error_not_a_zero_score():
    from hybridrft.rewards import RewardWorkerStartError, TimeLimitedWorker

    worker = TimeLimitedWorker(preload=("hybridrft_no_such_module",), startup_timeout=30)
    try:
        with pytest.raises(RewardWorkerStartError, match="exited with code"):
            worker.call("time:sleep", 0, timeout=5)
    finally:
        worker.close()
