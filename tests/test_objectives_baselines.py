"""Baselines and neighbours (two_stage, static_mix, luffy, chord, hpt) pinned to hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrft.config import load_config
from hybridrft.objectives import build_objective
from hybridrft.ops import warmup_cosine
from test_objectives import make_batch, run_loss

# two rollouts (rewards 1, 0) and one demonstration of a single prompt; one completion token each
MASK = [[0, 1], [0, 1], [0, 1]]
LOGP = [[0.0, -0.5], [0.0, -1.0], [0.0, -2.0]]
ENTROPY = [[0.0, 1.0]] * 3
A = 1 / math.sqrt(2)  # rewards (1, 0): mean 0.5, unbiased std 0.7071


def prepared(method, *overrides, reward=(1.0, 0.0, 1.0), step=1):
    objective = build_objective(load_config(overrides=[f"method={method}", *overrides]))
    batch = make_batch(MASK, is_demo=[False, False, True], group=[0, 0, 0], reward=list(reward))
    plan = objective.plan(step)
    info = objective.prepare(batch, plan)
    return objective, batch, plan, info


def test_two_stage_switches_from_sft_to_grpo():
    objective = build_objective(load_config(overrides=["method=two_stage", "two_stage.sft_steps=2", "grpo.num_generations=5"]))
    plans = [objective.plan(step) for step in (1, 2, 3, 4)]
    assert [p.kind for p in plans] == ["sft", "sft", "rl", "rl"]
    assert [p.rollouts_per_prompt for p in plans] == [0, 0, 5, 5]
    assert [p.info["two_stage/phase_rl"] for p in plans] == [0.0, 0.0, 1.0, 1.0]
    assert plans[0].info["two_stage/switch_step"] == 2.0
    sft_batch = make_batch([[0, 1, 1]], is_demo=[True], group=[0], reward=[1.0])
    loss, metrics, grad, _ = run_loss(objective, sft_batch, [[0.0, -1.0, -3.0]], [[0.0] * 3], plans[0])
    assert loss == pytest.approx(2.0) and "loss/sft" in metrics
    rl_batch = make_batch(MASK[:2], is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0])
    objective.prepare(rl_batch, plans[2])
    loss, metrics, grad, _ = run_loss(objective, rl_batch, LOGP[:2], ENTROPY[:2], plans[2])
    assert loss == pytest.approx(0.0, abs=1e-6) and "loss/policy" in metrics
    torch.testing.assert_close(grad[:, 1], torch.tensor([-A / 2, A / 2]), atol=1e-5, rtol=0)


def test_static_mix_adds_a_fixed_sft_term():
    objective, batch, plan, _ = prepared("static_mix", "static_mix.mu=0.1")
    assert plan.info["static_mix/mu"] == 0.1
    loss, m, grad, _ = run_loss(objective, batch, LOGP, ENTROPY, plan)
    # GRPO: token mean of (-A, +A) = 0; SFT: 2.0
    assert m["loss/policy"] == pytest.approx(0.0, abs=1e-6) and m["loss/sft"] == pytest.approx(2.0)
    assert loss == pytest.approx(0.2)
    torch.testing.assert_close(grad[:, 1], torch.tensor([-A / 2, A / 2, -0.1]), atol=1e-5, rtol=0)


def test_luffy_mixed_group_with_policy_shaping():
    objective, batch, plan, _ = prepared("luffy", "luffy.num_generations=3", "luffy.demos_per_group=1")
    assert (plan.rollouts_per_prompt, plan.demos_per_prompt) == (2, 1)
    # statistics over the rollouts only: the demonstration's advantage is (1 - 0.5) / 0.7071
    torch.testing.assert_close(batch.advantage, torch.tensor([A, -A, A]), atol=1e-5, rtol=0)
    loss, m, grad, _ = run_loss(objective, batch, LOGP, ENTROPY, plan)
    p = math.exp(-2.0)
    f = p / (p + 0.1)
    assert loss == pytest.approx((-A + A - A * f) / 3, rel=1e-4)
    assert m["loss/on_policy"] == pytest.approx(0.0, abs=1e-6)
    assert m["loss/off_policy"] == pytest.approx(-A * f / 3, rel=1e-4)
    f_prime = p * 0.1 / (p + 0.1) ** 2  # d f(exp(logp)) / d logp
    torch.testing.assert_close(grad[:, 1], torch.tensor([-A / 3, A / 3, -A * f_prime / 3]), atol=1e-5, rtol=1e-4)


def test_luffy_statistics_over_the_whole_group():
    _, batch, _, _ = prepared("luffy", "luffy.num_generations=3", "luffy.advantage_stats=group")
    torch.testing.assert_close(batch.advantage, torch.tensor([0.57735, -1.1547, 0.57735]), atol=1e-4, rtol=0)


def test_luffy_rejects_a_group_of_demonstrations_only():
    from hybridrft.config import ConfigError

    with pytest.raises(ConfigError, match="demos_per_group"):
        load_config(overrides=["luffy.num_generations=2", "luffy.demos_per_group=2"])


def test_chord_mu_schedule():
    # no warm-up: cosine from the peak; step 1 of 10: 0.02 + 0.48 * (1 + cos(pi / 10)) / 2
    assert warmup_cosine(1, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.488254, abs=1e-6)
    assert warmup_cosine(5, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.26)
    assert warmup_cosine(10, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.02)
    assert warmup_cosine(50, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.02)
    # with warm-up: linear rise, peak at the end of the warm-up
    assert warmup_cosine(2, peak=0.5, valley=0.02, warmup_steps=4, decay_steps=10) == pytest.approx(0.26)
    assert warmup_cosine(4, peak=0.5, valley=0.02, warmup_steps=4, decay_steps=10) == pytest.approx(0.5)


@pytest.mark.parametrize("token_weighting", [False, True])
def test_chord_loss_and_gradient(token_weighting):
    objective, batch, plan, _ = prepared(
        "chord", "chord.mu_peak=0.5", "chord.mu_valley=0.02", "chord.mu_decay_steps=10",
        f"chord.token_weighting={str(token_weighting).lower()}", step=5,
    )
    mu = plan.info["chord/mu"]
    assert mu == pytest.approx(0.26)
    loss, m, grad, _ = run_loss(objective, batch, LOGP, ENTROPY, plan)
    p = math.exp(-2.0)
    w = p * (1 - p) if token_weighting else 1.0  # CHORD-phi: sg(p (1 - p)), no gradient through w
    assert m["loss/sft"] == pytest.approx(w * 2.0, rel=1e-5)
    assert loss == pytest.approx(mu * w * 2.0, rel=1e-5)
    expected = torch.tensor([-(1 - mu) * A / 2, (1 - mu) * A / 2, -mu * w])
    torch.testing.assert_close(grad[:, 1], expected, atol=1e-5, rtol=1e-4)


# two prompts: prompt 0's rollouts both wrong, prompt 1's one right one wrong; a demonstration each
HPT_MASK = [[0, 1]] * 6
HPT_LOGP = [[0.0, -1.0], [0.0, -1.0], [0.0, -2.0], [0.0, -0.5], [0.0, -0.7], [0.0, -3.0]]


def hpt_case(gate):
    objective = build_objective(load_config(overrides=["method=hpt", f"hpt.switch_gate={gate}"]))
    batch = make_batch(HPT_MASK, is_demo=[False, False, True, False, False, True], group=[0, 0, 0, 1, 1, 1],
                       reward=[0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    plan = objective.plan(1)
    info = objective.prepare(batch, plan)
    return objective, batch, plan, info


def test_hpt_routes_each_prompt():
    objective, batch, plan, info = hpt_case(gate=0)
    assert info["hpt/sft_prompt_share"] == 0.5  # prompt 0 (no correct rollout) goes to SFT
    loss, m, grad, _ = run_loss(objective, batch, HPT_LOGP, [[0.0, 1.0]] * 6, plan)
    # selected tokens: prompt 0's demonstration (-logp = 2) and prompt 1's rollouts (-A, +A)
    assert loss == pytest.approx(2.0 / 3, rel=1e-5)
    assert m["loss/sft"] == pytest.approx(2.0 / 3, rel=1e-5) and m["loss/policy"] == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(grad[:, 1], torch.tensor([0, 0, -1 / 3, -A / 3, A / 3, 0]), atol=1e-5, rtol=0)


def test_hpt_gate_one_sends_both_prompts_to_sft():
    objective, batch, plan, info = hpt_case(gate=1)
    assert info["hpt/sft_prompt_share"] == 1.0
    loss, _, grad, _ = run_loss(objective, batch, HPT_LOGP, [[0.0, 1.0]] * 6, plan)
    assert loss == pytest.approx((2.0 + 3.0) / 2)
    torch.testing.assert_close(grad[:, 1], torch.tensor([0, 0, -0.5, 0, 0, -0.5]))
