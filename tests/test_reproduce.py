"""bench/reproduce.py: every method's recipe is a valid run with the shared settings, and the
orderings table computes the intervals it states."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from hybridrft.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "bench" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("reproduce", None)


@pytest.mark.parametrize("study", ["base", "warm"])
@pytest.mark.parametrize("kind", ["sweep", "run"])
def test_every_method_gets_a_valid_recipe_with_the_same_shared_settings(reproduce, tmp_path, study, kind):
    study = reproduce.STUDIES[study]
    steps = study.steps if kind == "run" else study.sweep_steps
    shared = set()
    for method in study.methods:
        out = tmp_path / method
        recipe = (reproduce.run_recipe(study, method, tmp_path, out, 1, 3e-5) if kind == "run"
                  else reproduce.sweep_recipe(study, method, tmp_path, out, 3e-5))
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        config = load_config(path)
        assert config.method == method and config.train.learning_rate == 3e-5
        assert config.model.name_or_path == study.start_model(tmp_path)
        shared.add((config.train.max_steps, config.train.prompts_per_step, config.group.num_generations,
                    config.group.demos_per_prompt, config.rollout.max_new_tokens, config.rollout.temperature,
                    tuple(config.reward.functions), config.eval.size, config.eval.every, config.eval.at_start,
                    Path(config.data.eval_source).name))
        if method == "relift":  # one step's prompts per fine-tuning batch, at the run's rate
            assert (config.relift.sft_prompts, config.relift.sft_learning_rate) == (reproduce.PROMPTS, 3e-5)
    expected_eval = ((reproduce.CURVE_SIZE, reproduce.CURVE_EVERY, study.curve_at_start, "id.jsonl") if kind == "run"
                     else (reproduce.SIZES["validation"], 0, False, "validation.jsonl"))
    assert shared == {(steps, reproduce.PROMPTS, reproduce.ROLLOUTS, reproduce.DEMOS, reproduce.ROLLOUT_TOKENS, 1.0,
                       ("math",), *expected_eval)}


def test_the_warm_study_starts_from_the_warm_start_and_tests_every_claim_among_its_methods(reproduce):
    warm = reproduce.WARM_START
    assert warm.steps >= 48 and warm.start_model(Path("/r")) == "/r/warm/start"
    assert {"sft", "grpo", "luffy", "srft", "sasr", "relift", "prefix_rft"} <= set(warm.seeded)
    assert {"static_mix", "chord", "hpt"} <= set(warm.single)
    tested = [(a, b) for a, b in reproduce.CLAIMS_TESTED if a in warm.methods and b in warm.methods]
    assert tested == [("srft", "sft"), ("srft", "grpo"), ("srft", "luffy"), ("srft", "relift"),
                      ("sasr", "sft"), ("sasr", "grpo"), ("sasr", "static_mix"),
                      ("prefix_rft", "sft"), ("prefix_rft", "grpo"), ("prefix_rft", "luffy"), ("prefix_rft", "srft")]


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
            (out / "done").write_text("1.0\n")

    for seed, (srft, sft) in enumerate([(0.50, 0.10), (0.52, 0.12), (0.54, 0.14)]):
        write("srft", seed, (srft, 0.1), (srft, 0.1 + seed / 10))
        write("sft", seed, (sft, 0.1), (sft, 0.3 - seed / 10))
    def table():
        rows = {line.split(" |")[0].strip("| "): line for line in reproduce.claim_table(tmp_path, reproduce.BASE_REGIME)}
        return {claim: [c.strip() for c in row.strip("|").split("|")[1:]] for claim, row in rows.items()}

    cells = table()["SRFT > SFT"]
    assert cells[0] == "+40.0 ± 4.5 (holds)"  # sd 2 points each side: 2.776 * 2 * sqrt(2/3) = 4.53
    assert cells[1] == "+0.0 ± 0.0 (not separable)"
    assert cells[3].endswith("(not separable)")
    assert table()["SRFT > GRPO"] == ["n/a (seeds 3/3, 0/3)"] * len(reproduce.METRICS)

    # a partial study: SASR has 1 of its 3 seeds, so its claims wait, whatever the other side's spread
    write("sasr", 0, (0.9, 0.1), (0.9, 0.1))
    assert table()["SASR > SFT"] == ["n/a (seeds 1/3, 3/3)"] * len(reproduce.METRICS)
    # static mix plans one seed: judged against SASR's three, here with no spread on either side
    for seed in (1, 2):
        write("sasr", seed, (0.9, 0.1), (0.9, 0.1))
    write("static_mix", 0, (0.8, 0.1), (0.9, 0.1))
    assert table()["SASR > static mix"][:2] == ["+10.0 ± 0.0 (no spread over seeds)", "+0.0 ± 0.0 (not separable)"]


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


def test_curves_average_the_seeds_after_smoothing_and_start_from_the_one_start_evaluation(reproduce, tmp_path):
    for seed, rewards in enumerate([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]):
        rows = [{"kind": "train", "step": k + 1, "reward/mean": r} for k, r in enumerate(rewards)]
        rows.insert(2, {"kind": "train", "step": 99, "loss": 1.0})  # a step without the metric is left out
        rows += [{"kind": "eval", "step": 8, "eval/accuracy": 0.25 + seed / 4}]
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folders = [tmp_path / "s0", tmp_path / "s1"]
    steps, mean, low, high = reproduce.method_curves(folders, "reward/mean")
    # smoothed over up to SMOOTH steps: seed 0 [0, 0.5, 0.667], seed 1 [1, 1, 0.667]
    assert steps == [1, 2, 3] and mean == pytest.approx([0.5, 0.75, 2 / 3]) and low == pytest.approx([0, 0.5, 2 / 3])
    assert reproduce.method_curves(folders, "eval/accuracy") == ([8], [0.375], [0.25], [0.5])

    study = reproduce.WARM_START
    generations = tmp_path / study.start_eval / "fp32" / "eval-greedy" / "generations"  # the trainer's precision
    generations.mkdir(parents=True)
    rows = [{"id": f"id-{k}", "correct": k % 4 == 0} for k in range(reproduce.SIZES["id"])]
    (generations / "id.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert reproduce.start_curve_point(tmp_path, study) == pytest.approx(0.25)
    (generations / "id.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    assert reproduce.start_curve_point(tmp_path, study) is None  # an unfinished evaluation draws no point


def test_a_rebuild_keeps_the_hand_written_claims_and_nothing_after_them(reproduce, tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\n## Claim by claim\n\nSRFT held.\n\n## Distillation\n\ntable\n\n## The first study\n\nold\n")
    assert reproduce.written_claims(doc) == "SRFT held."
    assert reproduce.written_claims(tmp_path / "missing.md") == "(written once the study has finished)"


def test_an_unfinished_evaluation_is_not_read(reproduce, tmp_path):
    """The evaluation rewrites results.json after each benchmark: without its done marker it may lack some."""
    folder = tmp_path / "eval-sampled"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"benchmarks": {"id": {"metrics": {"avg@4": 0.5}}}}))
    assert reproduce.read_eval(folder) is None
    (folder / "done").write_text("1.0\n")
    assert reproduce.read_eval(folder) == {"id/avg@4": 0.5}


def test_the_cost_counts_steps_scaled_by_one_piece_runs_and_every_evaluation(reproduce, tmp_path):
    study = reproduce.WARM_START
    home = study.home(tmp_path)

    def run(folder: Path, step_times: list[float], wall: float | None, evals: dict[str, float]) -> None:
        folder.mkdir(parents=True)
        rows = [{"kind": "train", "step": k + 1, "time/step": t} for k, t in enumerate(step_times)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + [{"kind": "eval", "step": 8}]))
        if wall is not None:
            (folder / "done.json").write_text(json.dumps({"last_piece_s": wall}))
        for name, seconds in evals.items():
            (folder / name).mkdir()
            (folder / name / "done").write_text(f"{seconds}\n")

    run(home / "sweep" / "grpo-lr1e-05", [1800.0, 1800.0], 3600 * 1.5, {})  # one piece: ratio 1.5
    run(home / "runs" / "grpo-seed0", [3600.0], 1800.0, {"eval-greedy": 900.0, "eval-sampled": 2700.0})  # resumed
    run(home / "runs" / "grpo-seed1", [1800.0], None, {})  # still training: its steps count, no ratio
    (tmp_path / study.start_eval / "eval-greedy").mkdir(parents=True)
    (tmp_path / study.start_eval / "eval-greedy" / "done").write_text("1800\n")
    text = reproduce.cost_text(study, tmp_path)
    assert "| the learning-rate sweeps | 1 | 1.0 h | 0.0 h | 1.5 h |" in text
    assert "| the runs | 2 | 1.5 h | 1.0 h | 3.2 h |" in text  # 1.5 h of steps x 1.5 + 1 h of evaluation
    assert "| the start's evaluations (bfloat16 and float32) | 1 | - | 0.5 h | 0.5 h |" in text
    assert "**5.2 h**" in text and "1.50, over the runs that trained in one piece (1 of them)" in text and "about 2.6 h of wall-clock" in text
    assert "pilot" not in text  # a stage that did not run has no row


def test_the_first_and_last_table_averages_each_end_then_the_seeds(reproduce, tmp_path):
    study = reproduce.WARM_START
    last = study.steps
    for seed, (early, late) in enumerate([(0.2, 0.4), (0.4, 0.8)]):
        folder = study.home(tmp_path) / "runs" / f"sasr-seed{seed}"
        folder.mkdir(parents=True)
        rows = [{"kind": "train", "step": k, "entropy/demo": 1.0} for k in range(1, 9)]  # SFT steps: no rollouts
        rows += [{"kind": "train", "step": k, "reward/mean": early, "entropy/rollout": 0.5, "entropy/demo": 1.0}
                 for k in range(9, last - 7)]
        rows += [{"kind": "train", "step": k, "reward/mean": late, "entropy/rollout": 0.1, "entropy/demo": 0.5}
                 for k in range(last - 7, last + 1)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "done.json").write_text("{}")
    (study.home(tmp_path) / "runs" / "sft-seed0").mkdir()  # not finished: no row
    table = reproduce.first_and_last_table(study, tmp_path)
    assert len(table) == 3
    assert table[2] == "| SASR | 2 | - → 0.600 | - → 0.100 | 1.000 → 0.500 |"
