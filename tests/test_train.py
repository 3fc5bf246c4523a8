"""Trainer integration: a tiny random Llama built in the test, trained for real with every objective."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_config
from hybridrft.train import RunFolderError, Trainer, latest_checkpoint, list_checkpoints, read_metrics

METHODS = ["sft", "grpo", "srft", "sasr", "two_stage", "static_mix", "luffy", "chord", "hpt"]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_two_steps_with_each_objective(method, tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", f"method={method}")
    trainer = Trainer(config)
    before = weights(trainer.policy)
    result = trainer.train()
    after = weights(trainer.policy)

    assert result.steps == 2
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed no weight"
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
        for key in ("lr", "time/step", "throughput/tokens_per_s", "reward/errors", "reward/timeouts", "reward/worker_restarts",
                    "train/skipped", "train/skipped_steps"):
            assert key in record
    evals = read_metrics(tmp_path / "run" / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in evals] == [0, 2] and "eval/accuracy" in evals[0]
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (result.final_model / "model.safetensors").is_file()
    assert (tmp_path / "run" / "eval" / "generations-step-000002.jsonl").is_file()

    expected_terms = {
        "sft": ["loss/sft"],
        "grpo": ["loss/policy", "reward/mean", "accuracy/rollout", "length/response_mean", "entropy/rollout"],
        "srft": ["loss/sft_demo", "loss/rl_demo", "loss/rl_self", "srft/w_sft", "entropy/rollout", "entropy/demo"],
        "sasr": ["sasr/p_t", "sasr/choice_sft", "sasr/g_sft", "sasr/g_warmup"],
        "two_stage": ["two_stage/phase_rl", "two_stage/switch_step", "loss/policy"],
        "static_mix": ["loss/policy", "loss/sft", "static_mix/mu"],
        "luffy": ["loss/on_policy", "loss/off_policy", "entropy/rollout", "entropy/demo"],
        "chord": ["chord/mu", "loss/policy", "loss/sft"],
        "hpt": ["hpt/sft_prompt_share", "loss/sft", "loss/policy"],
    }[method]
    for key in expected_terms:
        assert key in records[-1], f"{key} missing from the metrics of {method}"


def test_final_model_loads_with_transformers(tiny_model_dir, tmp_path):
    """final_model/ is the trained policy: the same tensors, and the same logits, through plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=1"))
    result = trainer.train()
    model = AutoModelForCausalLM.from_pretrained(result.final_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.final_model)
    assert model.config.vocab_size == len(tokenizer)

    trained = trainer.policy.state_dict()
    saved = model.state_dict()
    assert saved.keys() == trained.keys()
    for name, tensor in trained.items():
        assert saved[name].dtype == tensor.dtype and torch.equal(saved[name], tensor.detach().cpu()), name
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(initial[name], saved[name]) for name in saved), "final_model holds the untrained weights"

    device = trainer.policy.device  # the same device for both, so the same kernels
    ids = torch.tensor([tokenizer("Sam has 12 apples. He buys 7 more.").input_ids], device=device)
    trainer.policy.eval()
    model.to(device)
    with torch.no_grad():
        expected = trainer.policy(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert got.shape == (1, ids.shape[1], len(tokenizer))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=srft"],
        ["method=srft", "loss.aggregation=seq_mean_token_mean", "srft.entropy_granularity=batch"],
        ["method=grpo", "loss.aggregation=seq_mean_token_sum_norm", "grpo.beta=0.05"],
    ],
    ids=["srft-token_mean", "srft-seq_mean-batch_entropy", "grpo-dr-kl"],
)
def test_gradient_accumulation_matches_one_big_batch(overrides, tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", *overrides, "rollout.max_new_tokens=8"))
    plan, batch, _ = trainer.collect(1)
    assert len(batch) >= 6
    if trainer.reference is not None:  # measured once per step, before the updates
        batch.ref_logp = trainer._logprobs(batch, trainer.reference)

    def gradients(micro_batch_size):
        trainer.config.train.micro_batch_size = micro_batch_size
        trainer.optimizer.zero_grad(set_to_none=True)
        metrics = trainer.compute_gradients(batch, plan)
        return metrics, {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}

    one_metrics, one = gradients(len(batch))
    many_metrics, many = gradients(1)
    assert one.keys() == many.keys() and one
    for name in one:
        torch.testing.assert_close(many[name], one[name], atol=1e-6, rtol=1e-4)
    assert many_metrics["loss"] == pytest.approx(one_metrics["loss"], rel=1e-5, abs=1e-7)


def _comparable(records):
    drop = ("time/", "throughput/")
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in records]


@pytest.mark.parametrize("method", ["sasr", "srft"])
def test_resume_continues_exactly(method, tiny_model_dir, tmp_path):
    overrides = [f"method={method}", "train.max_steps=4", "train.lr_scheduler=cosine", "train.lr_warmup_steps=1"]
    if torch.cuda.is_available():
        # the shared-prompt forward's masked attention has a backward that sums with atomic adds on
        # CUDA, so there a resumed run matches a straight one to about 1e-8, not bit for bit
        overrides.append("train.shared_prompt_forward=false")
    straight = Trainer(tiny_config(tiny_model_dir, tmp_path / "straight", *overrides))
    straight.train()

    first = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides))
    first.train(stop_at=2)
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-000002"
    second = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides, "train.resume=true"))
    assert second.step == 2
    second.train()

    a, b = weights(straight.policy), weights(second.policy)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
    run_a = _comparable(read_metrics(tmp_path / "straight" / "metrics.jsonl", kind=None))
    run_b = _comparable(read_metrics(tmp_path / "resumed" / "metrics.jsonl", kind=None))
    # the resumed run evaluates at its start only once (step 0 of the first half)
    assert run_b == run_a
    if method == "sasr":
        assert second.objective.state.choices == straight.objective.state.choices


def test_checkpoints_are_atomic_and_pruned(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=3", "train.save_every=1",
                         "train.keep_checkpoints=2")
    Trainer(config).train()
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-000002", "step-000003"]
    # a half-written checkpoint (temporary name) is never taken for a complete one
    (root / ".step-000009-abc").mkdir()
    assert latest_checkpoint(root).name == "step-000003"
    state = torch.load(root / "step-000003" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3 and "rng" in state and "objective" in state


def test_existing_run_is_not_overwritten_silently(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=1")
    Trainer(config).train()
    with pytest.raises(RunFolderError, match="already holds a run.*--resume"):
        Trainer(config)
    Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=1", "train.overwrite=true"))


def test_bad_demonstration_reward_is_reported(tiny_model_dir, tmp_path, tiny_tokenizer):
    from hybridrft.data import Example

    examples = [Example(id=f"x{i}", prompt=f"What is {i} + 1?", demonstrations=[f"{i} + 1 = {i + 1}. \\boxed{{{i + 2}}}"],
                        answer=str(i + 1)) for i in range(4)]
    config = tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=1",
                         "reward.functions=[math]", "reward.weights=[1.0]")
    trainer = Trainer(config, train_examples=examples, eval_examples=examples[:2])
    trainer.train()
    record = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert record["data/demo_reward_mismatch"] == 2 and record["reward/demo_mean"] == 0.0


def test_samples_and_generations_are_readable(tiny_model_dir, tmp_path):
    """samples.jsonl: train.log_samples rollouts per step, each with the reward its text earns; the
    evaluation files: eval.size records per evaluation (steps 0 and 2), each scored the same way."""
    from conftest import brevity
    from hybridrft.rewards import get_reward

    math_reward = get_reward("math")

    def rescore(prompt: str, text: str, answer: str) -> float:  # reward.functions=[math,conftest:brevity], weights 1, 1
        return math_reward([prompt], [text], [answer])[0] + brevity([prompt], [text], [answer])[0]

    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=grpo", "train.log_samples=4"))
    used = []  # the indices of each step's training prompts, in order
    next_share = trainer.prompts.next_share

    def recording_next_share(step, count):
        share = next_share(step, count)
        used.append(share.indices)
        return share

    trainer.prompts.next_share = recording_next_share
    trainer.train()
    run = tmp_path / "run"

    # 2 steps x log_samples 4: the first 4 of each step's 2 prompts x 3 rollouts, so groups 0, 0, 0, 1
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["group"]) for s in samples] == [(1, 0), (1, 0), (1, 0), (1, 1), (2, 0), (2, 0), (2, 0), (2, 1)]
    assert len(used) == 2 and all(len(indices) == 2 for indices in used)
    for sample in samples:
        assert sample.keys() == {"step", "group", "reward", "text"}
        example = trainer.train_set.examples[used[sample["step"] - 1][sample["group"]]]
        assert sample["reward"] == rescore(example.prompt, sample["text"], example.answer), sample

    # an evaluation before training (eval.at_start) and one after the last step, each of eval.size=4 problems
    eval_files = sorted(p.name for p in (run / "eval").iterdir())
    assert eval_files == ["generations-step-000000.jsonl", "generations-step-000002.jsonl"]
    held_out = trainer.eval_set.examples
    assert len(held_out) == 4
    files = {name: [json.loads(line) for line in (run / "eval" / name).read_text().splitlines()] for name in eval_files}
    for records in files.values():
        assert [(r["id"], r["answer"]) for r in records] == [(e.id, e.answer) for e in held_out]
        for record, example in zip(records, held_out):
            assert record["score"] == rescore(example.prompt, record["completion"], example.answer)
            assert record["correct"] == (record["score"] >= 1.0)
            assert 0 < record["tokens"] <= 6  # eval.max_new_tokens=6
            assert not record["truncated"] or record["tokens"] == 6
    # the last file is the final policy's greedy evaluation, reproduced here exactly
    final = files["generations-step-000002.jsonl"]
    assert final == trainer.evaluate().records
    evals = read_metrics(run / "metrics.jsonl", kind="eval")
    assert [(r["step"], r["eval/accuracy"]) for r in evals] == [
        (0, sum(r["correct"] for r in files["generations-step-000000.jsonl"]) / 4),
        (2, sum(r["correct"] for r in final) / 4),
    ]


@pytest.mark.parametrize("method", ["grpo", "srft"])
def test_activation_checkpointing_gives_the_same_gradients(method, tiny_model_dir, tmp_path):
    """The shared-prompt forward under checkpointed layers (its caches are replayed in backward)."""

    def gradients(checkpointing: bool):
        trainer = Trainer(tiny_config(
            tiny_model_dir, tmp_path / f"run-{checkpointing}", f"method={method}",
            f"model.gradient_checkpointing={str(checkpointing).lower()}", "rollout.max_new_tokens=8",
        ))
        plan, batch, _ = trainer.collect(1)
        trainer.compute_gradients(batch, plan)
        return {n: p.grad.clone() for n, p in trainer.policy.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert any(g.abs().sum() > 0 for g in plain.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-5, rtol=1e-4)


NEW_METHOD = '''
"""A method written outside hybridrft: GRPO with a scaled loss, in one file."""
from dataclasses import dataclass

from hybridrft.objectives import RL, Objective, StepPlan, register_objective
from hybridrft.objectives.grpo import group_advantage, grpo_loss


@dataclass
class ScaledGRPOConfig:
    scale: float = 0.5


@register_objective
class ScaledGRPO(Objective):
    name = "scaled_grpo"
    config_section = ScaledGRPOConfig
    defaults = {"group.num_generations": 2, "grpo.entropy_coef": 0.01}
    summary_keys = (("scaled_grpo/scale", "scale"),)

    def plan(self, step):
        return StepPlan(RL, self.config.group.num_generations, 0, {"scaled_grpo/scale": self.config.scaled_grpo.scale})

    def prepare(self, batch, plan):
        batch.advantage = group_advantage(batch, self.config.group)
        return {}

    def loss(self, batch, out, totals, plan):
        loss, metrics = grpo_loss(self, batch, out, totals)
        return self.config.scaled_grpo.scale * loss, metrics
'''


def test_a_new_method_is_one_file_and_a_recipe(tiny_model_dir, tmp_path, monkeypatch):
    import importlib
    import sys

    from hybridrft.config import METHOD_DEFAULTS, METHOD_SECTIONS, load_config
    from hybridrft.objectives import OBJECTIVES

    (tmp_path / "scaled_grpo_method.py").write_text(NEW_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("scaled_grpo_method")
        recipe = tmp_path / "scaled.yaml"
        recipe.write_text("method: scaled_grpo\nscaled_grpo:\n  scale: 0.25\n")
        plain = load_config(recipe)
        assert plain.scaled_grpo.scale == 0.25
        assert plain.group.num_generations == 2 and plain.grpo.entropy_coef == 0.01  # the method's defaults
        config = tiny_config(tiny_model_dir, tmp_path / "run", "method=scaled_grpo", "scaled_grpo.scale=0.25")
        Trainer(config).train()
        records = read_metrics(tmp_path / "run" / "metrics.jsonl")
        assert [r["scaled_grpo/scale"] for r in records] == [0.25, 0.25]
        assert all("loss/entropy_bonus" in r for r in records)  # shared RL terms come with the base class
        assert "scaled_grpo" in (tmp_path / "run" / "config.yaml").read_text()
    finally:
        OBJECTIVES.pop("scaled_grpo", None)
        METHOD_SECTIONS.pop("scaled_grpo", None)
        METHOD_DEFAULTS.pop("scaled_grpo", None)
        sys.modules.pop("scaled_grpo_method", None)
