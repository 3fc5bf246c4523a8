"""A model that cannot be used is named at once: no folder and no usable hub id (offline, unreachable
hub), and a damaged weights file, in `hybridrft train` and `hybridrft eval`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from hybridrft.cli.main import app
from hybridrft.models import (ModelLoadError, ModelNotFoundError, check_model_source, check_weights_files, load_policy,
                              load_tokenizer, resolve_model_path)
from hybridrft.models import loading
from hybridrft.train import Trainer

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_lookups(monkeypatch, tmp_path):
    """No lookup remembered, an empty Hugging Face cache, not offline, not logged in."""
    import huggingface_hub
    from huggingface_hub import constants

    check_model_source.cache_clear()
    loading._CACHED_SNAPSHOTS.clear()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # read at each cache lookup
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    yield
    check_model_source.cache_clear()
    loading._CACHED_SNAPSHOTS.clear()


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


# a stand-in for the hub: repository -> {file: (status, X-Error-Code)}, "*" for any file; anything else 404
HUB_ROUTES = {
    "model": {"*": (200, None)},
    "gated": {"*": (401, None)},
    "gated-coded": {"*": (401, "GatedRepo")},
    "private": {"*": (401, "RepoNotFound")},
    "adapter": {"config.json": (404, "EntryNotFound"), "adapter_config.json": (200, None)},
    "no-config": {"*": (404, "EntryNotFound")},
    "down": {"*": (503, None)},
}


@pytest.fixture
def local_hub(monkeypatch):
    """A real HTTP server standing in for the hub (``HUB_ROUTES``); yields the (path, Authorization)
    of every request it answers."""
    import http.server

    requests: list[tuple[str, str | None]] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            requests.append((self.path, self.headers.get("Authorization")))
            parts = self.path.strip("/").split("/")  # someone/<repo>/resolve/main/<file>
            routes = HUB_ROUTES.get(parts[1], {}) if parts[0] == "someone" and len(parts) == 5 else {}
            code, error_code = routes.get(parts[-1], routes.get("*", (404, None)))
            self.send_response(code)
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield requests
    server.shutdown()


def test_a_hub_id_the_hub_has_passes_and_missing_or_gated_ones_are_named(local_hub):
    assert resolve_model_path("someone/model") == "someone/model"
    with pytest.raises(ModelNotFoundError, match=r"has no repository someone/missing"):
        check_model_source("someone/missing")
    with pytest.raises(ModelNotFoundError, match=r"someone/gated on the Hugging Face Hub is gated or private: log in"):
        check_model_source("someone/gated")


def test_the_hubs_error_codes_are_told_apart(local_hub):
    endpoint = os.environ["HF_ENDPOINT"]
    check_model_source("someone/adapter")  # a LoRA adapter repository: adapter_config.json, no config.json
    with pytest.raises(ModelNotFoundError, match=rf"someone/gated-coded on the Hugging Face Hub is gated: request "
                                                 rf"access on {endpoint}/someone/gated-coded and log in"):
        check_model_source("someone/gated-coded")
    with pytest.raises(ModelNotFoundError, match=r"has no repository someone/private \(or it is private or gated and "
                                                 r"you are not logged in: hf auth login, or set HF_TOKEN\)"):
        check_model_source("someone/private")
    with pytest.raises(ModelNotFoundError, match=r"someone/no-config on the Hugging Face Hub has neither a config.json "
                                                 r"nor an adapter_config.json: it is not a transformers model"):
        check_model_source("someone/no-config")
    with pytest.raises(ModelNotFoundError, match=r"there is no folder .*someone/down, and the Hugging Face Hub "
                                                 r".* answered HTTP 503 for someone/down\. Set HF_HUB_OFFLINE=1"):
        check_model_source("someone/down")


def test_the_lookup_sends_the_login_token_and_runs_once_per_name(local_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_stored_token")  # as after `hf auth login`
    for _ in range(3):
        assert resolve_model_path("someone/model") == "someone/model"
    assert local_hub == [("/someone/model/resolve/main/config.json", "Bearer hf_stored_token")]


def test_a_hanging_name_lookup_is_cut_short(monkeypatch):
    """DNS ignores socket timeouts: the lookup runs in a thread, abandoned after the timeout."""
    import socket

    release = threading.Event()

    def hanging_getaddrinfo(*args, **kwargs):
        release.wait(60)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    monkeypatch.setattr(loading, "HUB_LOOKUP_TIMEOUT_S", 0.5)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    start = time.monotonic()
    try:
        with pytest.raises(ModelNotFoundError, match=r"the Hugging Face Hub \(http://hub.invalid\) did not answer "
                                                     r"within 0.5 s to look up someone/some-model\. Set HF_HUB_OFFLINE=1"):
            check_model_source("someone/some-model")
        assert time.monotonic() - start < 3
    finally:
        release.set()


# ---------------------------------------------------------------- a hub id in the local cache

def _cache_model(tiny_model_dir: Path, repo_id: str) -> Path:
    """``repo_id`` in the (test's) Hugging Face cache as huggingface_hub lays it out; its snapshot folder."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_a_cached_hub_id_loads_from_the_cache_at_once_when_the_hub_is_unreachable(tiny_model_dir, monkeypatch, caplog):
    snapshot = _cache_model(tiny_model_dir, "someone/cached")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
    start = time.monotonic()
    with caplog.at_level("WARNING", logger="hybridrft"):
        assert resolve_model_path("someone/cached") == str(snapshot)
    assert "could not be reached to look up someone/cached" in caplog.text
    assert "loading someone/cached from the local Hugging Face cache" in caplog.text
    load_tokenizer("someone/cached")
    load_policy("someone/cached")  # transformers is given the snapshot folder: no retries against the hub
    assert time.monotonic() - start < 15


def test_a_cached_hub_id_offline_is_not_looked_up(tiny_model_dir, monkeypatch):
    _cache_model(tiny_model_dir, "someone/cached")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_hub_lookup", lambda repo_id: pytest.fail("looked up while offline"))
    assert resolve_model_path("someone/cached") == "someone/cached"  # transformers reads its cache itself


def test_a_damaged_weights_file_in_the_hub_cache_is_named(tiny_model_dir, monkeypatch):
    snapshot = _cache_model(tiny_model_dir, "someone/cached")
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as if set before the import
    with pytest.raises(ModelLoadError, match=rf"{weights} is damaged"):
        load_policy("someone/cached")


# ---------------------------------------------------------------- damaged weights files

@pytest.mark.parametrize("name", ["model-00001-of-00002.safetensors", "adapter_model.safetensors"])
def test_every_kind_of_weights_file_is_checked(name, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / name).write_bytes(b"<html>rate limited</html>")  # what a failed download can leave
    with pytest.raises(ModelLoadError, match=rf"{tmp_path / name} is damaged \(truncated or not a safetensors file: "
                                             r".*\); re-download or re-save the model"):
        check_weights_files(tmp_path)


def test_the_train_command_names_a_damaged_weights_file(tiny_model_dir, tmp_path):
    folder = _damaged_copy(tiny_model_dir, tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: sft\nmodel: {{name_or_path: {folder}}}\ndata: {{builtin_size: 8}}\n"
                      f"eval: {{size: 2}}\ntrain: {{output_dir: {tmp_path / 'run'}, max_steps: 1}}\n")
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    assert f"error: {folder / 'model.safetensors'} is damaged" in " ".join(result.output.split())


def test_python_m_hybridrft_eval_names_a_damaged_weights_file_in_one_line(tiny_model_dir, tmp_path):
    folder = _damaged_copy(tiny_model_dir, tmp_path)
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"}) + "\n" for i in range(2)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "hybridrft", "eval", str(folder), "--data", str(data),
                           "--max-new-tokens", "4", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert errors == [f"error: {folder / 'model.safetensors'} is damaged (truncated or not a safetensors file: "
                      "Error while deserializing header: incomplete metadata, file not fully covered); re-download "
                      "or re-save the model"], done.stderr
