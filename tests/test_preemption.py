"""SIGTERM and SIGINT stop a real training process cleanly: the last finished step is checkpointed,
the process says so and exits with code 75, and the resumed run ends bit-identical to one that was
never stopped. Real signals to real `hybridrft train` processes on the tiny model, at the trainer's
test-only pause points (which, like the work they stand in for, end when a stop is requested).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import run_outcome, write_tiny_recipe
from hybridrft.train import STOPPED_EXIT_CODE, list_checkpoints
from hybridrft.train import checkpoint as checkpoint_module


def _recipe(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    """4 SRFT steps, evaluation after steps 2 and 4, no periodic checkpoint (the default save_every=0)."""
    return write_tiny_recipe(tmp_path / f"{out.name}.yaml", model_dir, out, eval={"every": 2})


def _launch(command: list[str], pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop(checkpoint_module.PAUSE_ENV, None)
    if pause_at:
        env[checkpoint_module.PAUSE_ENV] = pause_at
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _train_command(recipe: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hybridrft.cli.main", "train", str(recipe), *args]


def _wait_for_pause(process: subprocess.Popen, point: str, pauses: int = 1, timeout: float = 300) -> list[str]:
    """The stderr lines up to the ``pauses``-th announcement of the pause point (several processes
    may announce it on one line); a process that never gets there fails the test after ``timeout``."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr] + [lines.put(None)], daemon=True).start()
    read, seen, deadline = [], 0, time.monotonic() + timeout
    while seen < pauses:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"no pause at {point} within {timeout} s:\n{''.join(read)[-3000:]}") from None
        if line is None:
            raise AssertionError(f"the run ended without reaching {point} (exit {process.wait()}):\n{''.join(read)[-3000:]}")
        read.append(line)
        seen += line.count(f"paused at {point}")
    process.rest_of_stderr = lines  # what follows, read by _signal_at
    return read


def _signal_at(command: list[str], point: str, signum: int, *, pauses: int = 1, repeat: int = 1) -> tuple[int, str, float]:
    """Run until the pause point, send ``signum`` (``repeat`` times at once); return the exit code,
    the whole stderr and the seconds from the signal to the exit."""
    process = _launch(command, pause_at=point)
    lines = _wait_for_pause(process, point, pauses)
    sent = time.monotonic()
    for _ in range(repeat):
        process.send_signal(signum)
    code = process.wait(timeout=300)
    seconds = time.monotonic() - sent
    while (line := process.rest_of_stderr.get(timeout=60)) is not None:
        lines.append(line)
    return code, "".join(lines), seconds


def _finish(command: list[str]) -> str:
    process = _launch(command)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """The run never stopped."""
    tmp = tmp_path_factory.mktemp("straight")
    out = tmp / "straight"
    _finish(_train_command(_recipe(tmp, tiny_model_dir, out)))
    return run_outcome(out)


@pytest.mark.parametrize(
    ("point", "signum", "saved_step", "what"),
    [
        # sampling step 3: abandoned, so step 2 (evaluated) is what is saved
        ("sampling:3", signal.SIGTERM, 2, "abandons the step"),
        # inside step 2's first update: the step is finished and saved, its evaluation left for the resume
        ("update:2", signal.SIGINT, 2, "finishes the step"),
        # during the evaluation after step 2: abandoned, the RNGs put back, made first by the resume
        ("eval:2", signal.SIGTERM, 2, "abandons the evaluation"),
    ],
)
def test_a_signal_checkpoints_the_last_finished_step_and_the_resume_is_bit_identical(
    point, signum, saved_step, what, straight, tiny_model_dir, tmp_path
):
    out = tmp_path / "stopped"
    recipe = _recipe(tmp_path, tiny_model_dir, out)
    code, err, seconds = _signal_at(_train_command(recipe), point, signum)
    name = signal.Signals(signum).name
    assert code == STOPPED_EXIT_CODE, err[-3000:]
    assert f"stopped by {name}" in err and f"saved the checkpoint of step {saved_step}" in err, err[-3000:]
    assert "--resume" in err and "Traceback" not in err
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"step-{saved_step:06d}"]
    assert not (out / "final_model").exists()
    assert seconds < 60, f"{seconds:.1f} s from the signal to the exit"
    _finish(_train_command(recipe, "--resume"))
    assert run_outcome(out) == straight, what


def test_a_duplicate_signal_is_one_request_and_a_later_second_one_stops_at_once(tiny_model_dir, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir, tmp_path / "twice")
    # the same signal delivered twice in a moment (a launcher forwarding a terminal's Ctrl-C): one clean stop
    code, err, _ = _signal_at(_train_command(recipe), "sampling:2", signal.SIGINT, repeat=2)
    assert code == STOPPED_EXIT_CODE and "saved the checkpoint of step 1" in err, err[-3000:]
    # a second request while the checkpoint of the first is being written: the process ends at once,
    # killed by the signal; the checkpoint being written is left as a temporary folder, never as a step
    out = tmp_path / "second"
    process = _launch(_train_command(_recipe(tmp_path, tiny_model_dir, out)), pause_at="checkpoint_write:4")
    _wait_for_pause(process, "checkpoint_write:4")
    process.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    assert process.poll() is None  # the first request waits for the step's save
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert list_checkpoints(out / "checkpoints") == []


def test_a_signal_before_the_first_step_saves_nothing_and_says_so(tiny_model_dir, tmp_path):
    out = tmp_path / "early"
    recipe = _recipe(tmp_path, tiny_model_dir, out)
    code, err, _ = _signal_at(_train_command(recipe), "sampling:1", signal.SIGTERM)
    assert code == STOPPED_EXIT_CODE and "no step had finished, nothing was saved" in err, err[-3000:]
    assert list_checkpoints(out / "checkpoints") == []


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate's launcher is not installed")
def test_under_accelerate_launch_every_process_stops_at_the_same_step(tiny_model_dir, tmp_path):
    """SIGTERM to the launcher (what a scheduler signals): torchrun forwards it to both workers, they
    agree to abandon the same step, rank 0 saves, and the resumed two-process run equals one never stopped."""
    launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hybridrft.cli.main", "train"]
    reference = tmp_path / "two-straight"
    _finish(launcher + [str(_recipe(tmp_path, tiny_model_dir, reference))])
    out = tmp_path / "two-stopped"
    recipe = _recipe(tmp_path, tiny_model_dir, out)
    code, err, _ = _signal_at(launcher + [str(recipe)], "sampling:3", signal.SIGTERM, pauses=2)
    assert code != 0
    assert err.count("saved the checkpoint of step 2") >= 1, err[-3000:]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000002"]
    _finish(launcher + [str(recipe), "--resume"])
    assert run_outcome(out) == run_outcome(reference)
