"""The run folder's own files: a record cut off by a kill is repaired on resume, and the final model
is written atomically."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from conftest import tiny_config
from hybridrft.train import Trainer, read_metrics
from hybridrft.train import saving as saving_module
from hybridrft.train.logging import MetricsLogger


def _write(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.jsonl"])
def test_a_cut_off_last_line_is_dropped_with_a_warning_naming_file_and_line(name, tmp_path, caplog):
    path = tmp_path / name
    _write(path, [{"kind": "train", "step": s} for s in (1, 2, 3)], tail='{"kind": "train", "step": 4, "loss": 0.5')
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        MetricsLogger(tmp_path, truncate_after=2)
    assert f"{path}, line 4: dropped an unfinished record" in caplog.text
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert not list(tmp_path.glob(".*.tmp"))  # rewritten through a temporary file, renamed into place


def test_a_damaged_line_before_the_last_is_an_error_and_the_file_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = '{"kind": "train", "step": 1}\n{"kind": "tr\n{"kind": "train", "step": 3}\n'
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}, line 2: not a JSON record"):
        MetricsLogger(tmp_path, truncate_after=3)
    assert path.read_text() == text


def test_resume_after_a_cut_off_metrics_line_continues(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=2", "train.save_every=1")).train()
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"kind": "train", "step": 3, "lo')  # a kill in the middle of a write
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=3", "train.resume=true")).train()
    assert "dropped an unfinished record" in caplog.text
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


# ---------------------------------------------------------------- final_model/

def test_the_final_model_is_fsynced_and_renamed_into_place(tiny_model_dir, tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=1"))
    monkeypatch.setattr(os, "fsync", recording_fsync)
    trainer.train()
    final = out / "final_model"
    files = sorted(p.name for p in final.iterdir())
    assert "model.safetensors" in files and "config.json" in files
    # every file was fsynced in the temporary folder that became final_model/, then the run folder
    written = [s for s in synced if "/.final_model-" in s]
    assert sorted({os.path.basename(s) for s in written if os.path.basename(s) in files}) == files
    assert str(out) in synced
    assert not [p for p in out.iterdir() if p.name.startswith(".final_model")]


def test_a_failed_final_save_leaves_the_previous_final_model_whole(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=1")).train()
    before = {p.name: p.read_bytes() for p in (out / "final_model").iterdir()}

    def half_written(folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saving_module, "_write_final_model", half_written)
    with pytest.raises(OSError, match="No space left"):
        Trainer(tiny_config(tiny_model_dir, out, "method=sft", "train.max_steps=2", "train.resume=true")).train()
    assert {p.name: p.read_bytes() for p in (out / "final_model").iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".final_model")]


def test_a_complete_last_record_without_its_newline_is_kept_and_ended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "step": 2}')  # cut just before the newline
    MetricsLogger(tmp_path, truncate_after=2).log({"step": 3})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_cut_off_line_followed_by_blank_lines_is_still_the_last(tmp_path, caplog):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "comp\n\n')
    with caplog.at_level(logging.WARNING, logger="hybridrft"):
        MetricsLogger(tmp_path, truncate_after=5)
    assert f"{path}, line 2: dropped an unfinished record" in caplog.text
    assert path.read_text() == '{"step": 1}\n'


def test_bytes_that_are_not_utf8_survive_the_rewrite_and_untouched_files_are_not_rewritten(tmp_path):
    metrics, samples = tmp_path / "metrics.jsonl", tmp_path / "samples.jsonl"
    metrics.write_bytes(b'{"step": 1, "text": "caf\xe9"}\n{"step": 2}\n')  # latin-1 written by some other tool
    samples.write_text('{"step": 1}\n')
    before = samples.stat().st_ino
    MetricsLogger(tmp_path, truncate_after=1)
    assert metrics.read_bytes() == b'{"step": 1, "text": "caf\xe9"}\n'
    assert samples.stat().st_ino == before  # nothing to drop: left as it is


def test_a_run_folders_leftover_rewrite_files_count_as_its_outputs(tmp_path):
    from hybridrft.train.run_folder import run_outputs_in

    for name in (".metrics.jsonl.tmp", ".samples.jsonl.tmp", ".final_model-abc123"):
        (tmp_path / name).write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    assert sorted(p.name for p in run_outputs_in(tmp_path)) == [".final_model-abc123", ".metrics.jsonl.tmp",
                                                                 ".samples.jsonl.tmp"]


# ---------------------------------------------------------------- save_final_model, called directly

@pytest.fixture
def final_save(tiny_model_dir, tmp_path):
    """save_final_model's pieces for one process: a real Engine and Processes, the tiny policy."""
    from hybridrft.config import load_config
    from hybridrft.models import load_policy, load_tokenizer
    from hybridrft.train.engines import Engine, build_accelerator
    from hybridrft.train.processes import Processes

    accelerator = build_accelerator(log_with=None, project_dir=str(tmp_path))
    policy = load_policy(str(tiny_model_dir))
    pieces = dict(engine=Engine(accelerator), processes=Processes(accelerator), model=policy, policy=policy,
                  tokenizer=load_tokenizer(str(tiny_model_dir)),
                  model_config=load_config(overrides=[f"model.name_or_path={tiny_model_dir}"]).model)
    return lambda path: saving_module.save_final_model(path, **pieces)


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_save_final_model_replaces_the_previous_one_and_leaves_nothing_beside_it(final_save, tmp_path, monkeypatch):
    from hybridrft.models import load_policy

    final = tmp_path / "run" / "final_model"
    final.mkdir(parents=True)
    (final / "stale.txt").write_text("from the previous save")
    (final.parent / ".final_model-x1y2z3").mkdir()  # what a save killed earlier left behind
    (final.parent / ".final_model-x1y2z3" / "model.safetensors").write_bytes(b"partial")
    final_save(final)
    assert not (final / "stale.txt").exists() and (final / "model.safetensors").is_file()
    load_policy(str(final))
    assert _hidden(final.parent) == []


def test_a_save_pretrained_that_fails_halfway_leaves_the_previous_final_model(final_save, tmp_path, monkeypatch):
    final = tmp_path / "run" / "final_model"
    final_save(final)
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    def half_written(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", half_written)  # the tiny policy's class
    with pytest.raises(OSError, match="No space left"):
        final_save(final)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert _hidden(final.parent) == []


def test_a_failed_rename_puts_the_previous_final_model_back(final_save, tmp_path, monkeypatch):
    final = tmp_path / "run" / "final_model"
    final_save(final)
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(src).startswith(".final_model-") and "-old-" not in str(src):
            raise OSError(5, "Input/output error")  # the new folder cannot be renamed into place
        return real_replace(src, dst)

    monkeypatch.setattr(saving_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        final_save(final)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert _hidden(final.parent) == []
