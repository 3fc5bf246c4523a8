"""A model that cannot be used is named at once: no folder and no usable hub id (offline, unreachable
hub), and a damaged weights file, in `hybridrft train` and `hybridrft eval`."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from hybridrft.cli.main import app
from hybridrft.models import ModelLoadError, ModelNotFoundError, check_model_source, load_policy
from hybridrft.train import Trainer

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_lookups(monkeypatch, tmp_path):
    check_model_source.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield
    check_model_source.cache_clear()


@pytest.mark.parametrize("name", ["no/such/thing/here", "./missing-folder", "bad name!"])
def test_a_name_that_is_no_folder_and_no_hub_id_fails_at_once(name):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"not found: there is no folder .*, and it is not a valid Hugging Face Hub id"):
        check_model_source(name)
    assert time.monotonic() - start < 1


def test_an_uncached_hub_id_offline_names_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"no folder .*not in the local Hugging Face cache while HF_HUB_OFFLINE is set"):
        check_model_source("someone/some-model")
    assert time.monotonic() - start < 1


def test_an_unreachable_hub_is_reported_after_one_quick_lookup(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"there is no folder .*someone/some-model, and the Hugging Face Hub "
                                                 r"\(http://127.0.0.1:9\) could not be reached .* HF_HUB_OFFLINE=1"):
        check_model_source("someone/some-model")
    assert time.monotonic() - start < 15


def test_the_train_command_reports_it_in_one_line_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: sft\ntrain: {{output_dir: {tmp_path / 'run'}}}\n")
    result = runner.invoke(app, ["train", str(recipe), "model.name_or_path=someone/some-model"])
    assert result.exit_code == 2
    assert "error: model 'someone/some-model' not found" in result.output and "HF_HUB_OFFLINE" in result.output


def _damaged_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def test_a_truncated_weights_file_is_named(tiny_model_dir, tmp_path):
    folder = _damaged_copy(tiny_model_dir, tmp_path)
    with pytest.raises(ModelLoadError, match=rf"{folder / 'model.safetensors'} is damaged \(truncated or not a safetensors file"):
        load_policy(str(folder))
    with pytest.raises(ModelLoadError, match="model.safetensors is damaged"):
        Trainer(tiny_config(folder, tmp_path / "run"))


def test_the_eval_command_names_a_damaged_weights_file(tiny_model_dir, tmp_path):
    folder = _damaged_copy(tiny_model_dir, tmp_path)
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"}) + "\n" for i in range(2)))
    result = runner.invoke(app, ["eval", str(folder), "--data", str(data), "--max-new-tokens", "4", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "model.safetensors is damaged" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def local_hub(monkeypatch):
    """A real HTTP server standing in for the hub: 200 for `someone/model`, 401 for `someone/gated`, 404 else."""
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            code = 200 if self.path.startswith("/someone/model/") else 401 if self.path.startswith("/someone/gated/") else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield
    server.shutdown()


def test_a_hub_id_the_hub_has_passes_and_missing_or_gated_ones_are_named(local_hub):
    from hybridrft.models import resolve_model_path

    assert resolve_model_path("someone/model") == "someone/model"
    with pytest.raises(ModelNotFoundError, match=r"has no repository someone/missing"):
        check_model_source("someone/missing")
    with pytest.raises(ModelNotFoundError, match=r"someone/gated on the Hugging Face Hub is gated or private: log in"):
        check_model_source("someone/gated")
