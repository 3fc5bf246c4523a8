"""A bad step, a bad checkpoint, a full disk or a killed process never costs the run.

Real training on the tiny model: a forward hook writes inf into the policy to poison a step; real
checkpoint folders are damaged on disk; a real training process is killed with SIGKILL at chosen
moments (the trainer's test-only pause points) and resumed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_outcome, tiny_config, write_tiny_recipe
from hybridrft.train import (
    CheckpointError,
    CheckpointWriteError,
    NonFiniteTrainingError,
    Trainer,
    latest_complete_checkpoint,
    list_checkpoints,
    read_metrics,
)
from hybridrft.train import checkpoint as checkpoint_module
from hybridrft.train.checkpoint import MANIFEST, checkpoint_problems, file_sha256


# On CUDA the shared-prompt forward's attention backward sums with atomic adds, so exact-resume
# comparisons use the plain forward there (docs/runs.md); on CPU every path is bit-exact.
EXACT = ["train.shared_prompt_forward=false"] if torch.cuda.is_available() else []


def snapshot(trainer) -> dict[str, object]:
    """Weights, optimizer state and schedule position, copied."""
    optimizer = {
        (id(p), k): v.clone() if torch.is_tensor(v) else v
        for p, state in trainer.optimizer.state.items()
        for k, v in state.items()
    }
    weights = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    return {"weights": weights, "optimizer": optimizer, "schedule": trainer.scheduler.last_epoch}


def same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def poison(trainer, when):
    """A forward hook on the final norm that writes inf into the hidden states while training
    (sampling runs without gradients and stays clean) whenever ``when()`` is true."""

    def hook(module, inputs, output):
        if torch.is_grad_enabled() and when():
            return output * float("inf")
        return output

    return trainer.policy.get_decoder().norm.register_forward_hook(hook)


# ---------------------------------------------------------------- non-finite steps

def test_a_non_finite_step_changes_nothing_and_is_counted(tiny_model_dir, tmp_path, caplog):
    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=srft", "train.max_steps=3"))
    trainer.training_step(1)
    before = snapshot(trainer)
    handle = poison(trainer, lambda: True)
    with caplog.at_level("WARNING"):
        metrics = trainer.training_step(2)
    handle.remove()
    assert metrics["train/skipped"] == 1.0 and metrics["train/skipped_steps"] == 1
    assert not torch.isfinite(torch.tensor(metrics["loss"]))
    assert same(snapshot(trainer), before), "a skipped step changed weights, optimizer state or schedule"
    assert "step 2 skipped" in caplog.text and all(i in caplog.text for i in trainer._step_example_ids)
    metrics = trainer.training_step(3)  # the run goes on
    assert metrics["train/skipped"] == 0.0 and metrics["train/skipped_steps"] == 1
    assert not same(snapshot(trainer)["weights"], before["weights"])


def test_consecutive_bad_steps_stop_the_run_with_its_last_checkpoint_intact(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=grpo", "train.max_steps=8", "train.save_every=1",
        "train.max_bad_steps=2", "eval.at_start=false",
    ))
    after_first = {}
    poison(trainer, lambda: trainer.step >= 2)
    original_save = trainer.save

    def save_and_remember():
        path = original_save()
        if trainer.step == 1:
            after_first.update(snapshot(trainer)["weights"])
        return path

    trainer.save = save_and_remember
    with pytest.raises(NonFiniteTrainingError, match="2 steps in a row.*train.max_bad_steps=2.*step-000002.*intact"):
        trainer.train()
    assert trainer.step == 3
    last = latest_complete_checkpoint(tmp_path / "run" / "checkpoints")
    assert last.name == "step-000002" and checkpoint_problems(last) == []
    from safetensors.torch import load_file

    saved = load_file(last / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], after_first[k].cpu()) for k in saved)  # the skipped step 2 changed nothing
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["train/skipped"] for r in records] == [0.0, 1.0, 1.0]


def test_an_update_above_the_gradient_norm_limit_is_not_applied_and_is_counted(tiny_model_dir, tmp_path, caplog):
    """HPT's skip (``train.skip_grad_norm_above``): an update whose gradient norm exceeds the limit
    leaves weights and optimizer moments as they were; the step's other updates and the schedule go on."""
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=hpt", "train.max_steps=3", "train.prompts_per_step=4",
        "train.updates_per_batch=2",
    ))
    before = snapshot(trainer)
    trainer.config.train.skip_grad_norm_above = 1e-12  # every update of this step is too large
    with caplog.at_level("WARNING"):
        metrics = trainer.training_step(1)
    assert metrics["train/large_grad_skips"] == 2.0 and metrics["train/large_grad_skipped_updates"] == 2
    assert metrics["train/skipped"] == 0.0 and metrics["train/skipped_steps"] == 0  # not a non-finite skip
    after = snapshot(trainer)
    assert same(after["weights"], before["weights"]) and same(after["optimizer"], before["optimizer"])
    assert after["schedule"] == before["schedule"] + 1  # the schedule steps, as the reference's does
    assert "step 1: 2 update(s) not applied" in caplog.text and "train.skip_grad_norm_above=1e-12" in caplog.text
    trainer.config.train.skip_grad_norm_above = 1e12
    metrics = trainer.training_step(2)
    assert metrics["train/large_grad_skips"] == 0.0 and metrics["train/large_grad_skipped_updates"] == 2
    assert not same(snapshot(trainer)["weights"], before["weights"])
    assert trainer.state_dict()["large_grad_skipped_updates"] == 2  # checkpointed with the run


# ---------------------------------------------------------------- checkpoints

def _train_with_checkpoints(model_dir, out, steps, *extra):
    trainer = Trainer(tiny_config(
        model_dir, out, "method=sasr", f"train.max_steps={steps}", "train.save_every=1", "train.keep_checkpoints=5",
        "train.lr_scheduler=cosine", *EXACT, *extra,
    ))
    trainer.train()
    return trainer


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_state_file_that_would_run_code(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _train_with_checkpoints(tiny_model_dir, out, 2)
    last = list_checkpoints(out / "checkpoints")[-1]
    marker = tmp_path / "code-ran"
    state = last / "trainer_state.pt"
    torch.save({"step": 2, "data_cursor": 4, "payload": RunsCode(marker)}, state)
    manifest = json.loads((last / MANIFEST).read_text())  # a consistent manifest: only safe loading stands in the way
    manifest["files"]["trainer_state.pt"] = {"bytes": state.stat().st_size, "sha256": file_sha256(state)}
    (last / MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint_problems(last) == []
    with pytest.raises(CheckpointError, match="trainer_state.pt: refusing to load it"):
        Trainer(tiny_config(tiny_model_dir, out, "method=sasr", "train.max_steps=3", "train.resume=true"))
    assert not marker.exists(), "the checkpoint's pickle ran code"


def _truncate(path: Path) -> None:
    data = (path / "model" / "model.safetensors").read_bytes()
    (path / "model" / "model.safetensors").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (_truncate, "model/model.safetensors has"),
        (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda p: (p / MANIFEST).unlink(), "manifest.json is missing"),
    ],
    ids=["truncated-file", "missing-file", "missing-manifest"],
)
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(damage, named, tiny_model_dir, tmp_path, caplog):
    straight = _train_with_checkpoints(tiny_model_dir, tmp_path / "straight", 4)
    out = tmp_path / "run"
    first = Trainer(tiny_config(
        tiny_model_dir, out, "method=sasr", "train.max_steps=4", "train.save_every=1", "train.keep_checkpoints=5",
        "train.lr_scheduler=cosine", *EXACT,
    ))
    first.train(stop_at=3)
    damage(out / "checkpoints" / "step-000003")
    with caplog.at_level("WARNING"):
        resumed = Trainer(tiny_config(
            tiny_model_dir, out, "method=sasr", "train.max_steps=4", "train.save_every=1", "train.keep_checkpoints=5",
            "train.lr_scheduler=cosine", "train.resume=true", *EXACT,
        ))
    assert resumed.step == 2
    assert "step-000003 is damaged" in caplog.text and named in caplog.text
    resumed.train()
    assert same(snapshot(resumed)["weights"], snapshot(straight)["weights"])
    drop = ("time/", "throughput/")
    rows = lambda p: [{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(p / "metrics.jsonl")]  # noqa: E731
    assert rows(out) == rows(tmp_path / "straight")


def test_every_checkpoint_file_and_folder_is_fsynced(tiny_model_dir, tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", recording_fsync)
    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=1", "eval.at_start=false"))
    path = trainer.save()
    monkeypatch.undo()
    root = str(tmp_path / "run" / "checkpoints")
    temp = next(Path(s) for s in synced if Path(s).name.startswith(".step-") and Path(s).parent == Path(root))
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert {str(Path(s).relative_to(temp)) for s in synced if s.startswith(str(temp) + "/")} >= set(files) | {"model"}
    assert str(temp) in synced and synced[-1] == root  # the folder before the rename, its parent after
    assert json.loads((path / MANIFEST).read_text())["files"].keys() == set(files) - {MANIFEST}


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_folder(tiny_model_dir, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=3", "train.save_every=1", "eval.at_start=false",
    ))
    trainer.train(stop_at=1)

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "_write_chunk", disk_full)
    with pytest.raises(CheckpointWriteError) as raised:
        trainer.train()
    message = str(raised.value)
    root = tmp_path / "run" / "checkpoints"
    assert f"no space left to write checkpoint step-000002 in {root}" in message
    assert re.search(r"it needs about [0-9.]+ MiB and [0-9.]+ (MiB|GiB) are free", message)
    assert "step-000001 is intact" in message and "--resume" in message
    assert [p.name for p in root.iterdir()] == ["step-000001"]  # no half-written folder left
    assert checkpoint_problems(root / "step-000001") == []


def test_a_real_full_disk_stops_the_command_with_the_message(tiny_model_dir, tmp_path):
    """On a 1.4 MB tmpfs, where the fourth checkpoint does not fit: the model's own writer
    (safetensors) hits ENOSPC. Needs permission to mount a tmpfs (root in a container)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the injected ENOSPC test covers the logic")
    try:
        recipe = _recipe(tmp_path, tiny_model_dir, disk / "run")
        process = _launch(recipe)
        _, err = process.communicate(timeout=300)
        assert process.returncode == 2, err[-2000:]
        root = disk / "run" / "checkpoints"
        assert "error: no space left to write checkpoint" in err and f"in {root}: it needs about" in err
        kept = list_checkpoints(root)
        assert kept and all(checkpoint_problems(p) == [] for p in kept)
        assert f"the previous checkpoint {kept[-1].name} is intact" in err
        assert not list(root.glob(".step-*"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------- kill anywhere

def _recipe(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    return write_tiny_recipe(tmp_path / f"{out.name}.yaml", model_dir, out, train={"save_every": 1, "keep_checkpoints": 5})


def _launch(recipe: Path, *args: str, pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop(checkpoint_module.PAUSE_ENV, None)
    if pause_at:
        env[checkpoint_module.PAUSE_ENV] = pause_at
    return subprocess.Popen(
        [sys.executable, "-m", "hybridrft.cli.main", "train", str(recipe), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _kill_at(recipe: Path, point: str, *args: str) -> None:
    """Run until the process reports the pause point, then SIGKILL it there."""
    process = _launch(recipe, *args, pause_at=point)
    deadline = time.monotonic() + 240
    for line in process.stderr:
        if f"paused at {point}" in line:
            break
        assert time.monotonic() < deadline, f"no pause at {point}"
    else:
        raise AssertionError(f"the run ended without reaching {point} (exit {process.wait()})")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def _finish(recipe: Path, *args: str) -> None:
    process = _launch(recipe, *args)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]


def _kill_and_resume(tmp_path, model_dir, points: list[str]):
    straight = tmp_path / "straight"
    _finish(_recipe(tmp_path, model_dir, straight))
    out = tmp_path / "killed"
    recipe = _recipe(tmp_path, model_dir, out)
    for k, point in enumerate(points):
        _kill_at(recipe, point, *(["--resume"] if k else []))
    _finish(recipe, "--resume")
    assert not list((out / "checkpoints").glob(".step-*")), "a killed save left its temporary folder"
    assert run_outcome(out) == run_outcome(straight)


def test_killed_while_writing_a_checkpoint_resumes_bit_identical(tiny_model_dir, tmp_path):
    _kill_and_resume(tmp_path, tiny_model_dir, ["checkpoint_write:2"])


@pytest.mark.reliability
def test_killed_anywhere_resumes_bit_identical(tiny_model_dir, tmp_path):
    # between steps, while sampling, while writing a checkpoint, and twice in one step's sampling
    _kill_and_resume(
        tmp_path, tiny_model_dir,
        ["between_steps:1", "sampling:2", "checkpoint_write:2", "sampling:3", "sampling:3", "checkpoint_write:4"],
    )
