"""Every shipped recipe (recipes/*.yaml and recipes/paper/*.yaml) loads, names a registered method
that matches its file name, builds its objective, and trains one step with the tiny test model.

Only what a CPU run cannot afford is overridden (model, data, lengths, batch sizes, evaluation);
every other value of the recipe must reach the config unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from conftest import config_value, flatten_tree
from hybridrft.config import load_config
from hybridrft.objectives import OBJECTIVES, build_objective
from hybridrft.train import Trainer, read_metrics

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml")) + sorted((RECIPE_DIR / "paper").glob("*.yaml"))
PAPER_METHODS = ("srft", "luffy", "hpt", "sasr", "relift")


def _is_paper(path: Path) -> bool:
    return path.parent.name == "paper"


def _expected_method(path: Path) -> str:
    """recipes/paper/<method>.yaml (or <method>_code.yaml: as the authors' code runs it),
    recipes/<method>_gsm8k.yaml, and the quickstart (SRFT)."""
    if _is_paper(path):
        return path.stem.removesuffix("_code")
    if path.stem == "quickstart":
        return "srft"
    if path.stem == "distill":  # distillation on the quickstart's task, from the quickstart's model
        return "distill"
    assert path.stem.endswith("_gsm8k"), f"{path.name}: recipes/ holds <method>_gsm8k.yaml files and quickstart.yaml"
    return path.stem[: -len("_gsm8k")]




def _cpu_overrides(method: str, recipe: dict, model_dir: Path, output_dir: Path) -> list[str]:
    overrides = [
        f"model.name_or_path={model_dir}",
        "model.dtype=float32",
        "model.gradient_checkpointing=false",
        "rollout.backend=native",  # the paper recipes sample with vLLM (tests/test_vllm.py covers that sampler)
        "data.source=builtin:arithmetic",
        "data.format=auto",
        "data.eval_source=null",
        "data.builtin_size=24",
        "data.max_demo_tokens=64",
        "eval.size=0",
        "eval.at_start=false",
        "eval.max_new_tokens=6",
        "rollout.max_new_tokens=6",
        "group.num_generations=3",
        "train.prompts_per_step=2",
        # the paper recipes make two optimizer updates per generation batch: keep that path
        f"train.updates_per_batch={recipe.get('train', {}).get('updates_per_batch', 1)}",
        "train.micro_batch_size=4",
        "train.max_steps=1",
        "train.save_every=0",
        f"train.output_dir={output_dir}",
    ]
    if method == "sasr":
        overrides.append("sasr.warmup_steps=1")
    if method == "two_stage":
        overrides.append("two_stage.sft_steps=1")
    if recipe.get("teacher"):  # a teacher with the tiny model's tokenizer: the tiny model itself
        overrides.append(f"teacher.name_or_path={model_dir}")
    return overrides


def test_every_recipe_is_covered():
    names = {p.relative_to(RECIPE_DIR).as_posix() for p in RECIPES}
    assert "quickstart.yaml" in names
    assert {f"paper/{m}.yaml" for m in PAPER_METHODS} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(RECIPE_DIR).as_posix())
def test_recipe_trains_one_step(path, tiny_model_dir, tmp_path):
    recipe = yaml.safe_load(path.read_text())
    method = recipe["method"]
    assert method in OBJECTIVES, f"{path.name}: method {method!r} is not a registered objective"
    assert method == _expected_method(path), f"{path.name} names method {method!r}"

    overrides = _cpu_overrides(method, recipe, tiny_model_dir, tmp_path / "run")
    config = load_config(path, overrides=overrides)
    assert config.method == method
    assert build_objective(config).name == method

    # every value the recipe sets, other than the CPU overrides, reaches the config unchanged
    overridden = {o.split("=", 1)[0] for o in overrides}
    for key, value in flatten_tree(recipe).items():
        if key not in overridden:
            assert config_value(config, key) == value, f"{path.name}: {key} is {config_value(config, key)!r}, the recipe says {value!r}"

    if _is_paper(path):
        assert config.model.name_or_path == str(tiny_model_dir)  # the recipe's own model is Qwen2.5-Math-7B
        assert recipe["model"]["name_or_path"] == "Qwen/Qwen2.5-Math-7B"
        assert recipe["data"]["format"] == "verl" and recipe["data"]["answer_instruction"] is None
        assert config.train.learning_rate == {"srft": 1e-6, "luffy": 1e-6, "hpt": 5e-6, "sasr": 1e-6, "relift": 1e-6}[method]
        assert config.train.updates_per_batch == 2
        assert config.rollout.temperature == 1.0 and config.grpo.beta == 0.0
        assert config.train.weight_decay == 0.01 and config.train.lr_warmup_steps == 0
        if method in ("srft", "luffy", "hpt", "relift"):
            assert config.grpo.entropy_coef == 0.001
        assert recipe["group"]["num_generations"] == (8 if method in ("hpt", "sasr", "relift") else 7)
        assert config.group.demos_per_prompt == 1

    Trainer(config).train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1]
    assert math.isfinite(records[0]["loss"]), f"{path.name}: loss {records[0]['loss']}"


def _write_verl_parquet(path: Path, rows: int, *, with_target: bool) -> Path:
    """A few rows shaped like openr1.parquet (train) or LUFFY's valid.parquet (no target)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = []
    for i in range(rows):
        a, b = i + 2, i + 5
        row = {
            "data_source": "openr1",
            "prompt": [
                {"role": "system", "content": "Think first, then put the answer in \\boxed{}."},
                {"role": "user", "content": f"What is {a}+{b}?"},
            ],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(a + b)},
            "extra_info": {"index": i, "split": "default"},
        }
        if with_target:
            row["target"] = [{"role": "assistant", "content": f"{a}+{b}={a + b}. \\boxed{{{a + b}}}"}]
        table.append(row)
    pq.write_table(pa.Table.from_pylist(table), path)
    return path


@pytest.mark.parametrize("method", ["luffy"])
def test_paper_recipe_reads_verl_parquets(method, tiny_model_dir, tmp_path):
    """The paper recipes' own data settings (data.format=verl, a separate data.eval_source without
    targets, data.answer_instruction=null) on tiny copies of openr1.parquet and valid.parquet."""
    path = RECIPE_DIR / "paper" / f"{method}.yaml"
    recipe = yaml.safe_load(path.read_text())
    train = _write_verl_parquet(tmp_path / "openr1.parquet", 6, with_target=True)
    valid = _write_verl_parquet(tmp_path / "valid.parquet", 2, with_target=False)
    keep = ("data.source", "data.format", "data.eval_source", "data.builtin_size", "eval.size", "eval.at_start")
    overrides = [o for o in _cpu_overrides(method, recipe, tiny_model_dir, tmp_path / "run") if not o.startswith(keep)]
    config = load_config(path, overrides=[*overrides, f"data.source={train}", f"data.eval_source={valid}"])
    assert config.data.format == "verl" and config.data.answer_instruction is None
    assert config.eval.at_start is False and config.eval.size == 2019

    result = Trainer(config).train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1] and math.isfinite(records[0]["loss"])
    evals = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in evals] == [1]  # the final evaluation, on the 2 rows of valid.parquet
    assert result.evals[1].num_examples == 2
