"""bench/reproduce.py: every method's recipe is a valid run with the shared settings, and the
orderings table computes the intervals it states."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from hybridrft.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "bench" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("curve", [True, False])
def test_every_method_gets_a_valid_recipe_with_the_same_shared_settings(reproduce, tmp_path, curve):
    steps = reproduce.STEPS if curve else reproduce.SWEEP_STEPS
    shared = set()
    for method in reproduce.METHODS:
        recipe = reproduce.method_recipe(method, tmp_path, tmp_path / method, seed=1, learning_rate=3e-5,
                                         steps=steps, curve=curve)
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        config = load_config(path)
        assert config.method == method and config.train.learning_rate == 3e-5
        shared.add((config.train.max_steps, config.train.prompts_per_step, config.group.num_generations,
                    config.group.demos_per_prompt, config.rollout.max_new_tokens, config.rollout.temperature,
                    tuple(config.reward.functions), config.eval.size, config.eval.every))
    assert shared == {(steps, reproduce.PROMPTS, reproduce.ROLLOUTS, reproduce.DEMOS, reproduce.ROLLOUT_TOKENS, 1.0,
                       ("math",), reproduce.CURVE_SIZE if curve else reproduce.SIZES["validation"],
                       reproduce.CURVE_EVERY if curve else 0)}


def test_difference_interval_is_the_pooled_t_interval(reproduce):
    diff, half = reproduce.difference_interval([0.1, 0.2, 0.3], [0.0, 0.1, 0.2])
    # pooled variance (0.02 + 0.02) / 4 = 0.01; t(4) = 2.776; sqrt(0.01 * (1/3 + 1/3)) = 0.08165
    assert diff == pytest.approx(0.1) and half == pytest.approx(2.776 * 0.0816497, rel=1e-5)
    diff, half = reproduce.difference_interval([0.1, 0.2, 0.3], [0.5])  # one run: the other side's spread
    assert diff == pytest.approx(-0.3) and half == pytest.approx(4.303 * (0.01 * (1 / 3 + 1)) ** 0.5, rel=1e-5)
    assert reproduce.difference_interval([0.2], [0.1]) is None
    assert reproduce.difference_interval([], [0.1, 0.2]) is None


def test_claim_table_reads_the_evaluations_and_states_verdicts(reproduce, tmp_path):
    def write(method, seed, greedy, sampled):
        for folder, values in (("eval-greedy", greedy), ("eval-sampled", sampled)):
            out = tmp_path / "runs" / f"{method}-seed{seed}" / folder
            out.mkdir(parents=True)
            benchmarks = {name: {"metrics": {metric: values[i]}} for i, (name, metric) in
                          enumerate((("id", "pass@1" if folder == "eval-greedy" else "avg@4"),
                                     ("ood", "pass@1" if folder == "eval-greedy" else "avg@4")))}
            (out / "results.json").write_text(json.dumps({"benchmarks": benchmarks}))

    for seed, (srft, sft) in enumerate([(0.50, 0.10), (0.52, 0.12), (0.54, 0.14)]):
        write("srft", seed, (srft, 0.1), (srft, 0.1 + seed / 10))
        write("sft", seed, (sft, 0.1), (sft, 0.3 - seed / 10))
    rows = {line.split(" |")[0].strip("| "): line for line in reproduce.claim_table(tmp_path)}
    cells = [c.strip() for c in rows["SRFT > SFT"].strip("|").split("|")[1:]]
    assert cells[0] == "+40.0 ± 4.5 (holds)"  # sd 2 points each side: 2.776 * 2 * sqrt(2/3) = 4.53
    assert cells[1] == "+0.0 ± 0.0 (not separable)"
    assert cells[3].endswith("(not separable)")
    assert rows["SRFT > GRPO"].count("n/a") == len(reproduce.METRICS)


def test_run_costs_sum_the_training_steps_and_count_rewarded_groups(reproduce, tmp_path):
    rows = [{"kind": "eval", "step": 0, "eval/accuracy": 0.0},
            {"kind": "train", "step": 1, "tokens/generated": 100, "tokens/trained": 300, "time/step": 2.0,
             "groups/none_correct": 1.0},
            {"kind": "train", "step": 2, "tokens/trained": 50, "time/step": 1.0},  # an SFT step: no groups
            {"kind": "train", "step": 3, "tokens/generated": 80, "tokens/trained": 200, "time/step": 3.0,
             "groups/none_correct": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    costs = reproduce.run_costs(tmp_path)
    assert (costs["generated"], costs["trained"], costs["seconds"]) == (180, 550, 6.0)
    assert costs["rewarded"] == pytest.approx(0.25)
    assert reproduce.rewarded_cell([costs, {"rewarded": float("nan")}]) == "25%"
    assert reproduce.rewarded_cell([reproduce.run_costs(tmp_path / "none")]) == "-"
