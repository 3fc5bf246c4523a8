"""What a step means, checked on a real tiny model: the temperature the losses see, several updates
per generation batch (old log-probs, ratio, clip), per-phase learning rates, demonstration EOS and
the diagnostics every step logs."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config
from hybridrft.ops import clipped_surrogate
from hybridrft.rollout import SamplingParams, build_rollout_batch, update_parts
from hybridrft.train import Trainer, read_metrics
from hybridrft.train.scoring import PolicyScorer
from hybridrft.train.metrics import concatenate_columns, rollout_metrics, sequence_columns


@pytest.mark.parametrize("shared_prompt_forward", [True, False])
def test_training_logprobs_are_the_samplers_at_its_temperature(shared_prompt_forward, tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "rollout.temperature=0.7", "rollout.max_new_tokens=12",
        f"train.shared_prompt_forward={str(shared_prompt_forward).lower()}",
    ))
    prompts = trainer.train_set.prompt_ids[:2]
    completions = trainer.sampler.generate(prompts, SamplingParams(n=3, temperature=0.7, max_new_tokens=12), seed=5)
    batch = build_rollout_batch(
        [prompts[c.prompt_index] for c in completions], [c.token_ids for c in completions],
        is_demo=[False] * len(completions), group=[c.prompt_index for c in completions],
        reward=[0.0] * len(completions), truncated=[c.truncated for c in completions],
        pad_id=trainer.tokenizer.pad_token_id,
    )
    batch = batch.to(trainer.accelerator.device)
    with torch.no_grad():
        logp = trainer._forward(batch).logp
    sampled = torch.tensor([lp for c in completions for lp in c.logprobs], device=logp.device)
    trained = logp[batch.loss_mask]
    assert sampled.numel() == trained.numel() > 12
    torch.testing.assert_close(trained, sampled, atol=1e-5, rtol=1e-5)
    # the same tokens scored at temperature 1 are not what the sampler drew them with
    trainer.config.rollout.temperature = 1.0
    with torch.no_grad():
        untempered = trainer._forward(batch, PolicyScorer.for_run(trainer.config, trainer.policy)).logp[batch.loss_mask]
    assert (untempered - sampled).abs().max() > 1e-3


def test_second_update_has_a_ratio_and_clipped_tokens_get_no_gradient(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=grpo", "train.epochs_per_batch=2", "train.learning_rate=3e-2",
        "rollout.max_new_tokens=8",
    ))
    plan, batch, _ = trainer.collect(1)
    batch.old_logp = trainer._logprobs(batch, trainer.model)  # the behaviour policy, measured once
    on_device = batch.to(trainer.accelerator.device)
    mask = on_device.masks["rollout"]
    with torch.no_grad():
        first = trainer._forward(on_device).logp
    torch.testing.assert_close(first[mask], on_device.old_logp[mask])  # the first update's ratio is 1

    trainer.compute_gradients(batch, plan)
    trainer.optimizer_update()
    logp = trainer._forward(on_device).logp.detach().requires_grad_()
    ratio = torch.exp(logp - on_device.old_logp)[mask]
    assert (ratio - 1).abs().max() > 0.05  # the second update sees a moved policy

    advantage = on_device.advantage.unsqueeze(-1)
    per_token, clipped = clipped_surrogate(logp, on_device.old_logp, advantage, eps_low=0.2, eps_high=0.2)
    (per_token * mask).sum().backward()
    clipped &= mask
    assert clipped.any(), "no token left the clip range; raise the learning rate of this test"
    assert torch.all(logp.grad[clipped] == 0)
    moving = mask & ~clipped & (advantage != 0)
    assert torch.all(logp.grad[moving] != 0)


def test_a_step_with_two_epochs_logs_a_clip_fraction(tiny_model_dir, tmp_path):
    common = ["method=grpo", "train.learning_rate=3e-2", "rollout.max_new_tokens=8", "train.max_steps=1", "eval.at_start=false"]
    once = Trainer(tiny_config(tiny_model_dir, tmp_path / "once", *common))
    twice = Trainer(tiny_config(tiny_model_dir, tmp_path / "twice", *common, "train.epochs_per_batch=2"))
    m_once, m_twice = once.training_step(1), twice.training_step(1)
    assert m_once["grpo/clip_fraction"] == 0.0  # one update: old = current, ratio 1
    assert m_twice["grpo/clip_fraction"] > 0.0  # the mean of the updates' fractions: the second clips
    # two AdamW steps were taken in the second run, one in the first
    state = next(iter(twice.optimizer.state.values()))
    assert float(state["step"]) == 2.0 and float(next(iter(once.optimizer.state.values()))["step"]) == 1.0


def test_updates_per_batch_splits_the_prompt_groups(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=srft", "train.prompts_per_step=4", "train.updates_per_batch=2",
        "rollout.max_new_tokens=6",
    ))
    plan, batch, _ = trainer.collect(1)
    parts = update_parts(batch.group, 2)
    assert len(parts) == 2 and sorted(sum(parts, [])) == list(range(len(batch)))
    groups = [set(batch.group[p].tolist()) for p in parts]
    assert groups[0].isdisjoint(groups[1]) and all(len(g) == 2 for g in groups)
    metrics = trainer.training_step(1)
    assert float(next(iter(trainer.optimizer.state.values()))["step"]) == 2.0
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])


def test_two_stage_learning_rate_per_phase_and_optimizer_reset(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=two_stage", "two_stage.sft_steps=2",
        "two_stage.sft_learning_rate=1e-3", "two_stage.rl_learning_rate=1e-5", "train.max_steps=3",
        "train.lr_scheduler=constant", "eval.at_start=false",
    ))
    trainer.train()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 1e-3, 1e-5])
    assert [r["plan"] for r in records] == ["sft", "sft", "rl"]
    # AdamW's step count restarted at the switch: one RL step since the reset, not three in all
    assert float(next(iter(trainer.optimizer.state.values()))["step"]) == 1.0


def test_learning_rate_phase_keeps_the_schedule_shape(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=sasr", "sasr.warmup_steps=2", "sasr.sft_learning_rate=2e-3",
        "train.lr_scheduler=constant_with_warmup", "train.lr_warmup_steps=2", "train.max_steps=2", "eval.at_start=false",
    ))
    trainer.train()
    # warm-up factors 0 and 1/2 of the SFT phase's base rate
    assert [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == pytest.approx([0.0, 1e-3])


def test_demonstrations_end_with_the_token_the_sampler_stops_on(tiny_model_dir, tmp_path, tiny_tokenizer):
    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=sft"))
    def demo_ends(step):
        _, batch, _ = trainer.collect(step)
        lengths = batch.sequence_lengths
        return {int(batch.input_ids[row, lengths[row] - 1]) for row in range(len(batch))}

    assert demo_ends(1) == {trainer.sampler.stop_token_id} == {trainer.sampler.eos_ids[0]}
    # a model whose generation config stops on another id first: demonstrations follow the sampler
    other = tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    trainer.sampler.eos_ids = [other, tiny_tokenizer.eos_token_id]
    assert demo_ends(2) == {other}


def test_every_step_logs_the_reproduction_diagnostics(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "run", "method=srft", "train.log_reference_kl=true", "train.max_steps=2",
        "eval.at_start=false",
    ))
    assert trainer.reference is not None
    trainer.train()
    first, second = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for record in (first, second):
        assert 0.0 < record["demo/token_prob"] < 1.0
        assert record["groups/all_correct"] + record["groups/none_correct"] <= 1.0
        assert "srft/negative_logp_min" in record and record["srft/negative_logp_min"] < 0
    # step 1 is scored before any update: the policy is the initial one
    assert first["kl/initial_policy"] == pytest.approx(0.0, abs=1e-7)
    assert second["kl/initial_policy"] > 1e-6


def test_group_solve_shares_by_hand():
    batch = build_rollout_batch(
        [[1, 2]] * 6, [[3]] * 6, is_demo=[False] * 6, group=[0, 0, 1, 1, 2, 2],
        reward=[1.0, 1.0, 0.0, 1.0, 0.0, 0.0], truncated=[False] * 6, pad_id=0,
    )
    metrics = rollout_metrics(concatenate_columns([sequence_columns(batch, {}, [0, 1, 2])]), 0, 1.0)
    assert metrics["groups/all_correct"] == pytest.approx(1 / 3)
    assert metrics["groups/none_correct"] == pytest.approx(1 / 3)
