"""A run folder is never silently mixed, lost or overwritten, and a run's data and budgets are
checked before its model loads: the lock, empty-folder rule and overwrite, the config comparison on
resume, demonstrations and context length, unwritable and full output locations."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config, write_tiny_recipe
from hybridrft.data import Example
from hybridrft.train import RunFolderError, Trainer, list_checkpoints
from hybridrft.train import checkpoint as checkpoint_module
from hybridrft.train import trainer as trainer_module
from hybridrft.train.run_folder import CONFIG_CHANGES_FILE, LOCK_FILE


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the policy is loaded: what it guards must be found before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was found")
    monkeypatch.setattr(trainer_module, "load_training_policy", refuse)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- one run per folder

def test_a_second_run_on_a_locked_folder_is_refused_before_it_touches_anything(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    first = Trainer(tiny_config(tiny_model_dir, out, "method=sft"))
    before = _listing(out)
    with pytest.raises(RunFolderError, match=rf"{out} is in use by another run: pid {os.getpid()} on host .*started"):
        Trainer(tiny_config(tiny_model_dir, out, "method=grpo", "train.resume=true"))
    assert _listing(out) == before
    first.train()  # the first run is unaffected, and lets go of the folder when it ends
    Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.resume=true", "train.max_steps=3")).train()


def _launch(recipe: Path, *args: str, pause_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ}
    env.pop(checkpoint_module.PAUSE_ENV, None)
    if pause_at:
        env[checkpoint_module.PAUSE_ENV] = pause_at
    return subprocess.Popen([sys.executable, "-m", "hybridrft.cli.main", "train", str(recipe), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _recipe(tmp_path: Path, model_dir: Path, out: Path, method: str = "srft") -> Path:
    return write_tiny_recipe(tmp_path / f"{method}.yaml", model_dir, out, method=method,
                             train={"max_steps": 3, "save_every": 1})


def test_concurrent_commands_on_one_folder_and_a_stale_lock(tiny_model_dir, tmp_path):
    """A running `hybridrft train` holds its folder: a second one (even --resume) exits 2 naming it and
    leaves every file as it was; once the first is killed, the next run names the stale lock and goes on."""
    out = tmp_path / "run"
    first = _launch(_recipe(tmp_path, tiny_model_dir, out), pause_at="between_steps:2")
    for line in first.stderr:
        if "paused at between_steps:2" in line:
            break
    before = _listing(out)
    for args in ((), ("--resume",)):
        second = _launch(_recipe(tmp_path, tiny_model_dir, out, method="grpo"), *args)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-2000:]
        assert f"is in use by another run: pid {first.pid} on host" in err and "Traceback" not in err
        assert _listing(out) == before
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = _launch(_recipe(tmp_path, tiny_model_dir, out), "--resume")
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-3000:]
    assert f"stalelockleftbypid{first.pid}" in "".join(err.split())  # the log line may be wrapped
    assert (out / LOCK_FILE).read_text() == ""  # a run that ended cleanly leaves no record


# ---------------------------------------------------------------- folders are never clobbered

def test_a_fresh_run_refuses_a_folder_that_holds_anything(tiny_model_dir, tmp_path, no_model_load):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my own notes\n")
    with pytest.raises(RunFolderError, match=r"already holds files \(config.yaml\).*--resume.*train.overwrite=true"):
        Trainer(tiny_config(tiny_model_dir, out))
    assert (out / "config.yaml").read_text() == "my own notes\n"


def test_overwrite_removes_the_previous_runs_outputs_first_and_keeps_other_files(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=4", "train.save_every=1",
                        "train.keep_checkpoints=4")).train()
    (out / "notes.txt").write_text("keep me\n")
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=2", "train.save_every=1",
                            "train.overwrite=true")).train()
    said = caplog.text
    assert "removing the previous run's" in said and "checkpoints" in said and "metrics.jsonl" in said
    assert "keeping notes.txt" in said
    # the longer earlier run's checkpoints are gone: they can neither prune the new ones nor be resumed
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000001", "step-000002"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2]
    assert (out / "notes.txt").read_text() == "keep me\n"


# ---------------------------------------------------------------- resume checks the config

def test_resume_refuses_a_changed_method_or_model_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=srft", "train.max_steps=1")).train()
    monkeypatch.setattr(trainer_module, "load_training_policy",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    with pytest.raises(RunFolderError, match=r"cannot resume: .*method: 'srft' -> 'sasr'.*train.allow_config_changes=\[method\]"):
        Trainer(tiny_config(tiny_model_dir, out, "method=sasr", "train.resume=true", "train.max_steps=2"))
    with pytest.raises(RunFolderError, match=r"model.name_or_path: .* -> '/elsewhere'"):
        Trainer(tiny_config(tiny_model_dir, out, "model.name_or_path=/elsewhere", "train.resume=true"))
    with pytest.raises(RunFolderError, match=r"group.num_generations: 3 -> 4"):
        Trainer(tiny_config(tiny_model_dir, out, "group.num_generations=4", "train.resume=true"))


def test_resume_keeps_the_config_and_records_other_changes_with_their_step(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=srft", "train.max_steps=2")).train()
    original = (out / "config.yaml").read_text()
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        Trainer(tiny_config(tiny_model_dir, out, "method=srft", "train.max_steps=3", "train.learning_rate=5e-4",
                            "train.resume=true")).train()
    assert "changed settings" in caplog.text and "train.learning_rate: 0.001 -> 0.0005" in caplog.text
    assert (out / "config.yaml").read_text() == original  # the record of how the first steps were trained
    record = json.loads((out / CONFIG_CHANGES_FILE).read_text())
    assert record["step"] == 2 and record["applies_from_step"] == 3
    assert record["changes"] == {"train.learning_rate": {"old": 0.001, "new": 0.0005},
                                 "train.max_steps": {"old": 2, "new": 3}}
    # the resumed checkpoint keeps the config it was trained with
    assert yaml.safe_load((out / "checkpoints" / "step-000003" / "config.yaml").read_text())["train"]["learning_rate"] == 5e-4


def test_an_allowed_change_of_a_fixed_setting_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=srft", "train.max_steps=1")).train()
    Trainer(tiny_config(tiny_model_dir, out, "method=srft", "train.max_steps=2", "group.num_generations=2",
                        "train.resume=true", "train.allow_config_changes=[group.num_generations]")).train()
    changes = json.loads((out / CONFIG_CHANGES_FILE).read_text())["changes"]
    assert changes["group.num_generations"] == {"old": 3, "new": 2}


# ---------------------------------------------------------------- before the first step

def _examples(demo: str | None, n: int = 6) -> list[Example]:
    return [Example(id=f"q{i}", prompt=f"What is {i} + 1?", answer=str(i + 1),
                    demonstrations=[] if (demo is None and i % 3 == 1) else [demo or f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}"])
            for i in range(n)]


def test_missing_demonstrations_are_found_before_the_model_loads(tiny_model_dir, tmp_path, no_model_load):
    with pytest.raises(ValueError, match=r"method srft trains on demonstrations, but 2 of 6 training examples .* have none "
                                         r"\(first: q1, q4\).*data.on_error=skip"):
        Trainer(tiny_config(tiny_model_dir, tmp_path / "run"), train_examples=_examples(None), eval_examples=[])


def test_skip_drops_the_rows_without_demonstrations_and_counts_them(tiny_model_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "data.on_error=skip"),
                          train_examples=_examples(None), eval_examples=[])
    assert "skipped 2 of 6 training examples" in caplog.text and "first: q1, q4" in caplog.text
    assert [e.id for e in trainer.train_set.examples] == ["q0", "q2", "q3", "q5"]
    trainer.train()
    # GRPO never reads a demonstration: the same rows are all kept
    grpo = Trainer(tiny_config(tiny_model_dir, tmp_path / "grpo", "method=grpo"), train_examples=_examples(None), eval_examples=[])
    assert len(grpo.train_set) == 6


@pytest.mark.parametrize(
    ("overrides", "demo", "message"),
    [
        (["rollout.max_new_tokens=500"], None,
         r"rollouts would not fit the model's context: the longest training prompt has (\d+) tokens and "
         r"rollout.max_new_tokens=500, \d+ positions, but the model in .* has max_position_embeddings=512\. "
         r"Lower rollout.max_new_tokens to at most \d+, or data.max_prompt_tokens"),
        (["eval.max_new_tokens=500"], None, r"evaluation would not fit .* Lower eval.max_new_tokens to at most \d+"),
        ([], "1 + 1 = 2. " * 300,
         r"demonstrations would not fit the model's context: example q\d has a \d+-token prompt and a 1024-token "
         r"demonstration, \d+ positions, .*max_position_embeddings=512\. Lower data.max_demo_tokens"),
    ],
)
def test_budgets_beyond_the_models_positions_are_refused_before_it_loads(
    overrides, demo, message, tiny_model_dir, tmp_path, no_model_load
):
    examples = _examples(demo or "1 + 1 = 2. \\boxed{2}")
    with pytest.raises(ValueError, match=message):
        Trainer(tiny_config(tiny_model_dir, tmp_path / "run", *overrides), train_examples=examples, eval_examples=examples[:2])


def test_budgets_within_the_models_positions_pass(tiny_model_dir, tmp_path):
    examples = _examples("1 + 1 = 2. " * 300)
    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "data.max_demo_tokens=300"),
                      train_examples=examples, eval_examples=examples[:2])
    trainer.train()


# ---------------------------------------------------------------- unwritable and full output locations

def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


def test_read_only_and_full_output_locations_fail_at_start(tiny_model_dir, tmp_path, no_model_load):
    read_only, full = tmp_path / "ro", tmp_path / "full"
    if not _mount_tmpfs(read_only, "ro,size=64k"):
        pytest.skip("needs permission to mount a tmpfs (root in a container has it)")
    try:
        with pytest.raises(RunFolderError, match=rf"train.output_dir {read_only}/run is not writable \(Read-only file system\)"):
            Trainer(tiny_config(tiny_model_dir, read_only / "run"))
        assert _mount_tmpfs(full, "size=64k")
        (full / "run").mkdir()
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            os.close(fd)
        with pytest.raises(RunFolderError, match=rf"train.output_dir {full}/run is on a full file system"):
            Trainer(tiny_config(tiny_model_dir, full / "run"))
    finally:
        for folder in (read_only, full):
            subprocess.run(["umount", str(folder)], capture_output=True)


def test_an_allowed_model_change_still_needs_the_same_tokenizer(tiny_model_dir, tmp_path):
    import shutil

    from hybridrft.models import load_tokenizer

    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=1")).train()
    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, moved)  # the same model in another folder: allowed, resumes
    Trainer(tiny_config(moved, out, "method=sft", "train.max_steps=2", "train.resume=true",
                        "train.allow_config_changes=[model.name_or_path]")).train()
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = load_tokenizer(str(other))
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match=rf"the tokenizer of model.name_or_path={other} differs from that of the checkpoint"):
        Trainer(tiny_config(other, out, "method=sft", "train.max_steps=3", "train.resume=true",
                            "train.allow_config_changes=[model]"))


def test_without_flock_an_exclusive_lock_file_stands_in(tmp_path, monkeypatch, caplog):
    """A file system without flock (ENOLCK: NFS without a lock daemon): the O_EXCL lock file refuses a
    second holder naming the first, and one left by a dead process on this host is named and taken over."""
    import errno
    import fcntl

    from hybridrft.train.run_folder import FALLBACK_LOCK_FILE, RunFolderLock

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    first = RunFolderLock(tmp_path).acquire()
    with pytest.raises(RunFolderError, match=rf"in use by another run: pid {os.getpid()} on host .*lock file .*{FALLBACK_LOCK_FILE}"):
        RunFolderLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / FALLBACK_LOCK_FILE).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": os.uname().nodename, "started": "earlier", "command": "hybridrft train x.yaml"}
    (tmp_path / FALLBACK_LOCK_FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        RunFolderLock(tmp_path).acquire().release()
    assert f"removing a stale lock left by pid {record['pid']}" in caplog.text


def test_the_command_prints_a_refused_resume_as_written(tiny_model_dir, tmp_path):
    """The message names train.allow_config_changes=[...]: printed as text, not read as markup."""
    from typer.testing import CliRunner

    from hybridrft.cli.main import app

    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=srft", "train.max_steps=1")).train()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": "grpo", "model": {"name_or_path": str(tiny_model_dir)},
                                      "train": {"output_dir": str(out)}}))
    result = CliRunner().invoke(app, ["train", str(recipe), "--resume"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "train.allow_config_changes=[" in said and ",method," in said and said.rstrip().endswith("]")
