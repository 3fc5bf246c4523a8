"""The run folder's own files: a record cut off by a kill is repaired on resume, and the final model
is written atomically."""

from __future__ import annotations

import json
import logging
import os

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
