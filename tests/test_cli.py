"""The command line, driven the way a user types it (Typer's runner, real training underneath)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hybridrft.cli.main import app
from hybridrft.eval import read_generations
from hybridrft.rewards import get_reward

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


# every command of `hybridrft`, with the one-line description `hybridrft --help` shows for it
COMMANDS = {
    "train": "Train with a recipe. Writes config.yaml, metrics.jsonl, checkpoints, the final model, plots and "
    "report.html into train.output_dir.",
    "quickstart": "SRFT on built-in arithmetic word problems with the embedded SmolLM2-135M-Instruct, on CPU.",
    "eval": "Evaluate a model on benchmarks: pass@1 (greedy), or avg@n and pass@k over n samples.",
    "report": "Turn run folders into report.html (self-contained, opens from disk) plus PNG plots.",
    "analyze": "Diagnostics from the SRFT paper: token-probability shift between two models, entropy over training.",
}


def help_commands(output: str) -> dict[str, str]:
    """The rows of the Commands panel of Typer's rich help: {command: its description, unwrapped}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line and line.lstrip().startswith("╭"))
    commands: dict[str, list[str]] = {}
    for line in lines[start + 1:]:
        if line.lstrip().startswith("╰"):
            break
        row = line.strip().strip("│").rstrip()
        if row[:2].strip():  # "│ name  description": a new command (continuation rows are indented)
            name, _, description = row.strip().partition(" ")
            commands[name] = [description]
        else:
            commands[name].append(row)
    return {name: " ".join(" ".join(parts).split()) for name, parts in commands.items()}


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert help_commands(result.output) == COMMANDS
    analyze = runner.invoke(app, ["analyze", "--help"])
    assert analyze.exit_code == 0, analyze.output
    assert set(help_commands(analyze.output)) == {"shift", "entropy"}


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
    assert "not found: there is no folder" in result.output and "not a valid Hugging Face Hub id" in result.output


def test_bad_data_file_is_a_clear_error(tmp_path, tiny_model_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n{"question": "oops"\n')
    result = runner.invoke(app, ["train", str(tiny_recipe(tmp_path, tiny_model_dir)), f"data.source={data}", "eval.size=1"])
    assert result.exit_code == 2
    assert "bad.jsonl" in result.output and "line 2" in result.output


def test_eval_command_writes_results(tmp_path, tiny_model_dir):
    data = tmp_path / "bench.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(tiny_model_dir), "--data", str(data), "--max-new-tokens", "4"]
    settings = {"model": str(tiny_model_dir), "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 0,
                "system_prompt": None, "shuffle_options": True}

    # fresh: every problem generated once, greedy, and scored by the math reward
    fresh = tmp_path / "fresh"
    result = runner.invoke(app, ["eval", *args, "-o", str(fresh)])
    assert result.exit_code == 0, result.output
    records = read_generations(fresh / "generations" / "custom.jsonl")
    assert [(r["id"], r["sample"], r["answer"]) for r in records] == [(f"gsm8k-{i}", 0, str(2 * i)) for i in range(4)]
    rescored = get_reward("math")(prompts=[r["prompt"] for r in records], completions=[r["completion"] for r in records],
                                  answer=[r["answer"] for r in records])
    assert [r["score"] for r in records] == rescored
    assert [r["correct"] for r in records] == [score >= 1.0 for score in rescored]
    for record in records:
        assert record["settings"] == settings and 0 < record["tokens"] <= 4
    summary = json.loads((fresh / "results.json").read_text())["benchmarks"]["custom"]
    assert (summary["problems"], summary["generated_this_run"], summary["reused"]) == (4, 4, 0)
    assert summary["metrics"]["pass@1"] == sum(r["correct"] for r in records) / 4

    # resumed: generations already in the output folder (3 of 4 correct) are read back, none made
    out = tmp_path / "eval"
    path = out / "generations" / "custom.jsonl"
    path.parent.mkdir(parents=True)
    written = [
        {"id": f"gsm8k-{i}", "sample": 0, "correct": i != 2, "score": 0.0 if i == 2 else 1.0,
         "extracted": None if i == 2 else str(2 * i), "answer": str(2 * i),
         "completion": "no idea" if i == 2 else f"\\boxed{{{2 * i}}}", "tokens": i + 1, "truncated": i == 3,
         "finished": i != 3, "prompt": f"What is {i} + {i}?", "settings": settings}
        for i in range(4)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in written))
    before = path.read_bytes()
    result = runner.invoke(app, ["eval", *args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())["benchmarks"]["custom"]
    assert summary["metrics"] == {"pass@1": 0.75}
    assert (summary["problems"], summary["generated_this_run"], summary["reused"]) == (4, 0, 4)
    # tokens 1..4, the last one truncated, the third one without an answer
    assert (summary["mean_response_tokens"], summary["truncated"], summary["answered"]) == (2.5, 0.25, 0.75)
    assert path.read_bytes() == before  # nothing appended


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
