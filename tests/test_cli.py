"""The command line, driven the way a user types it (Typer's runner, real training underneath)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hybridrft.cli.main import app

runner = CliRunner()


def tiny_recipe(tmp_path, model_dir, method="srft"):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"""
method: {method}
model: {{name_or_path: {model_dir}}}
data: {{builtin_size: 16}}
rollout: {{max_new_tokens: 5}}
group: {{num_generations: 2}}
eval: {{size: 3, max_new_tokens: 5}}
train: {{output_dir: {tmp_path / 'run'}, max_steps: 2, prompts_per_step: 2, micro_batch_size: 4, learning_rate: 1.0e-3}}
"""
    )
    return recipe


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "eval", "quickstart"):
        assert command in result.output


def test_train_writes_a_run_folder_with_plots(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["train", str(tiny_recipe(tmp_path, tiny_model_dir)), "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "final_model/model.safetensors", "report.html", "plots/loss.png",
                 "plots/reward.png", "plots/entropy.png", "plots/method.png"):
        assert (run / name).is_file(), name
    # resume from the finished run's checkpoint with more steps
    result = runner.invoke(app, ["train", str(tiny_recipe(tmp_path, tiny_model_dir)), "train.max_steps=3", "--resume"])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3]


def test_unknown_override_is_a_clear_error(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["train", str(tiny_recipe(tmp_path, tiny_model_dir)), "train.max_stepz=3"])
    assert result.exit_code == 2
    assert "did you mean 'train.max_steps'" in result.output


def test_missing_model_is_a_clear_error(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["train", str(tiny_recipe(tmp_path, tiny_model_dir)), f"model.name_or_path={tmp_path}/nope"])
    assert result.exit_code == 2
    assert "model folder not found" in result.output


def test_bad_data_file_is_a_clear_error(tmp_path, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "oops"\n')
    result = runner.invoke(app, ["train", str(tiny_recipe(tmp_path, tiny_model_dir)), f"data.source={data}", "eval.size=1"])
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output and "line 2" in result.output


def test_eval_command_writes_results(tmp_path, tiny_model_dir):
    data = tmp_path / "bench.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())["benchmarks"]["custom"]
    assert summary["problems"] == 3 and 0.0 <= summary["metrics"]["pass@1"] <= 1.0
    assert len((out / "generations" / "custom.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_quickstart_on_the_embedded_model(tmp_path):
    """A shortened quickstart on SmolLM2-135M-Instruct: loads the GGUF, trains, prints the table."""
    result = runner.invoke(
        app,
        ["quickstart", f"train.output_dir={tmp_path / 'qs'}", "train.max_steps=2", "eval.size=8",
         "train.prompts_per_step=2", "group.num_generations=2", "rollout.max_new_tokens=24", "eval.max_new_tokens=24"],
    )
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output and "before (step 0)" in result.output
    assert (tmp_path / "qs" / "final_model" / "model.safetensors").is_file()
    assert (tmp_path / "qs" / "plots" / "loss.png").is_file()
