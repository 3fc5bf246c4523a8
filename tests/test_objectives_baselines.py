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
    """The method on the case above; the entropy bonus is off unless an override sets it, so that
    the hand-computed terms add up to the loss."""
    objective = build_objective(load_config(overrides=[f"method={method}", "grpo.entropy_coef=0", *overrides]))
    batch = make_batch(MASK, is_demo=[False, False, True], group=[0, 0, 0], reward=list(reward))
    plan = objective.plan(step)
    info = objective.prepare_batch(batch, plan)
    return objective, batch, plan, info


def test_two_stage_switches_from_sft_to_grpo():
    objective = build_objective(load_config(overrides=[
        "method=two_stage", "two_stage.sft_steps=2", "group.num_generations=5",
        "two_stage.sft_learning_rate=5e-5", "two_stage.rl_learning_rate=1e-6",
    ]))
    plans = [objective.plan(step) for step in (1, 2, 3, 4)]
    assert [p.kind for p in plans] == ["sft", "sft", "rl", "rl"]
    assert [p.rollouts_per_prompt for p in plans] == [0, 0, 5, 5]
    # each phase its own learning rate; the optimizer is reset once, when the RL phase starts
    assert [p.learning_rate for p in plans] == [5e-5, 5e-5, 1e-6, 1e-6]
    assert [p.reset_optimizer for p in plans] == [False, False, True, False]
    assert [p.info["two_stage/phase_rl"] for p in plans] == [0.0, 0.0, 1.0, 1.0]
    assert plans[0].info["two_stage/switch_step"] == 2.0
    sft_batch = make_batch([[0, 1, 1]], is_demo=[True], group=[0], reward=[1.0])
    loss, metrics, grad, _ = run_loss(objective, sft_batch, [[0.0, -1.0, -3.0]], [[0.0] * 3], plans[0])
    assert loss == pytest.approx(2.0) and "loss/sft" in metrics
    rl_batch = make_batch(MASK[:2], is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0])
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
    """The default: mean and std over the whole mixed group (rollouts and the demonstration)."""
    objective, batch, plan, _ = prepared("luffy", "group.num_generations=2")
    assert (plan.rollouts_per_prompt, plan.demos_per_prompt) == (2, 1)
    a_pos, a_neg = 0.57735, -1.1547  # rewards (1, 0, 1): mean 2/3, unbiased std 0.57735
    torch.testing.assert_close(batch.advantage, torch.tensor([a_pos, a_neg, a_pos]), atol=1e-4, rtol=0)
    loss, m, grad, _ = run_loss(objective, batch, LOGP, ENTROPY, plan)
    p = math.exp(-2.0)
    f = p / (p + 0.1)
    assert loss == pytest.approx((-a_pos - a_neg - a_pos * f) / 3, rel=1e-4)
    assert m["loss/on_policy"] == pytest.approx((-a_pos - a_neg) / 3, rel=1e-4)
    assert m["loss/off_policy"] == pytest.approx(-a_pos * f / 3, rel=1e-4)
    f_prime = p * 0.1 / (p + 0.1) ** 2  # d f(exp(logp)) / d logp
    torch.testing.assert_close(grad[:, 1], torch.tensor([-a_pos / 3, -a_neg / 3, -a_pos * f_prime / 3]), atol=1e-5, rtol=1e-4)


def test_luffy_failed_rollouts_of_an_unsolved_group_are_pushed_down():
    # both rollouts wrong, the demonstration right: in the mixed group the rollouts get -0.57735
    _, batch, _, _ = prepared("luffy", "group.num_generations=2", reward=(0.0, 0.0, 1.0))
    torch.testing.assert_close(batch.advantage, torch.tensor([-0.57735, -0.57735, 1.1547]), atol=1e-4, rtol=0)
    # rollouts-only statistics (LUFFY's grpo_split): they get 0 and only the demonstration teaches
    _, batch, _, _ = prepared("luffy", "group.num_generations=2", "group.advantage_stats=rollouts", reward=(0.0, 0.0, 1.0))
    torch.testing.assert_close(batch.advantage, torch.tensor([0.0, 0.0, 1.0]))


def test_luffy_statistics_over_the_rollouts_only():
    objective, batch, plan, _ = prepared("luffy", "group.num_generations=2", "group.advantage_stats=rollouts")
    # the demonstration's advantage is (1 - 0.5) / 0.7071
    torch.testing.assert_close(batch.advantage, torch.tensor([A, -A, A]), atol=1e-5, rtol=0)
    loss, _, _, _ = run_loss(objective, batch, LOGP, ENTROPY, plan)
    p = math.exp(-2.0)
    assert loss == pytest.approx((-A + A - A * p / (p + 0.1)) / 3, rel=1e-4)


def test_luffy_defaults_follow_the_released_script():
    config = load_config(overrides=["method=luffy"])
    assert (config.group.num_generations, config.group.demos_per_prompt) == (7, 1)  # rollout.n=8, n_prefix=1
    assert config.group.advantage_stats == "mixed" and config.grpo.entropy_coef == 0.001
    assert config.luffy.policy_shaping_gamma == 0.1
    # a recipe or override still wins over a method's defaults
    assert load_config(overrides=["method=luffy", "group.num_generations=3"]).group.num_generations == 3
    assert load_config(overrides=["method=grpo"]).grpo.entropy_coef == 0.0


def test_chord_mu_schedule():
    # no warm-up: cosine from the peak; step 1 of 10: 0.02 + 0.48 * (1 + cos(pi / 10)) / 2
    assert warmup_cosine(1, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.488254, abs=1e-6)
    assert warmup_cosine(5, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.26)
    assert warmup_cosine(10, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.02)
    assert warmup_cosine(50, peak=0.5, valley=0.02, warmup_steps=0, decay_steps=10) == pytest.approx(0.02)
    # with warm-up: linear rise from 0 (Trinity-RFT's mu_schedule_function), peak at the end of the warm-up
    assert warmup_cosine(1, peak=0.5, valley=0.02, warmup_steps=4, decay_steps=10) == pytest.approx(0.125)
    assert warmup_cosine(2, peak=0.5, valley=0.02, warmup_steps=4, decay_steps=10) == pytest.approx(0.25)
    assert warmup_cosine(4, peak=0.5, valley=0.02, warmup_steps=4, decay_steps=10) == pytest.approx(0.5)
    # or from the valley, as an option
    assert warmup_cosine(2, peak=0.5, valley=0.02, warmup_steps=4, decay_steps=10, warmup_start=0.02) == pytest.approx(0.26)
    # no warm-up and no decay: the valley at every step (Trinity-RFT's defaults give a constant mu)
    assert warmup_cosine(1, peak=0.9, valley=0.1, warmup_steps=0, decay_steps=0) == pytest.approx(0.1)


def test_chord_default_schedule_rises_from_zero():
    objective = build_objective(load_config(overrides=["method=chord"]))
    mus = [objective.plan(step).info["chord/mu"] for step in (1, 100, 200, 400, 600, 1000)]
    # warm-up 200 steps to 0.5, cosine over 400 steps to 0.02 (Trinity-RFT examples/mix_chord/mix_chord.yaml)
    assert mus == pytest.approx([0.0025, 0.25, 0.5, 0.26, 0.02, 0.02])


def test_chord_entropy_bonus_is_not_scaled_by_one_minus_mu_and_covers_rollouts_only():
    objective, batch, plan, _ = prepared(
        "chord", "chord.mu_warmup_steps=0", "chord.mu_decay_steps=10", "grpo.entropy_coef=0.01",
        "chord.token_weighting=false", step=5,
    )
    mu = plan.info["chord/mu"]
    loss, m, _, egrad = run_loss(objective, batch, LOGP, ENTROPY, plan)
    assert m["loss/entropy_bonus"] == pytest.approx(-0.01)  # token mean of H = 1 over the 2 rollout tokens
    assert loss == pytest.approx(mu * 2.0 - 0.01, rel=1e-5)
    torch.testing.assert_close(egrad[:, 1], torch.tensor([-0.005, -0.005, 0.0]))


@pytest.mark.parametrize("token_weighting", [False, True])
def test_chord_loss_and_gradient(token_weighting):
    objective, batch, plan, _ = prepared(
        "chord", "chord.mu_peak=0.5", "chord.mu_valley=0.02", "chord.mu_warmup_steps=0", "chord.mu_decay_steps=10",
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


def hpt_case(gate, *overrides):
    objective = build_objective(load_config(overrides=["method=hpt", f"hpt.switch_gate={gate}", "grpo.entropy_coef=0", *overrides]))
    batch = make_batch(HPT_MASK, is_demo=[False, False, True, False, False, True], group=[0, 0, 0, 1, 1, 1],
                       reward=[0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    plan = objective.plan(1)
    info = objective.prepare_batch(batch, plan)
    return objective, batch, plan, info


def test_hpt_routes_each_prompt_and_normalises_each_term_over_its_own_tokens():
    objective, batch, plan, info = hpt_case(0)
    assert info["hpt/sft_prompt_share"] == 0.5  # prompt 0 (no correct rollout) goes to SFT
    loss, m, grad, _ = run_loss(objective, batch, HPT_LOGP, [[0.0, 1.0]] * 6, plan)
    # L = token mean of GRPO over prompt 1's rollouts (-A, +A) + sft_coef * token mean of -logp over
    # prompt 0's demonstration (one token, 2.0): the one SFT prompt weighs fully, not 1/3
    assert m["loss/policy"] == pytest.approx(0.0, abs=1e-6) and m["loss/sft"] == pytest.approx(2.0, rel=1e-5)
    assert loss == pytest.approx(2.0, rel=1e-5)
    torch.testing.assert_close(grad[:, 1], torch.tensor([0, 0, -1.0, -A / 2, A / 2, 0]), atol=1e-5, rtol=0)


def test_hpt_sft_coef():
    objective, batch, plan, _ = hpt_case(0, "hpt.sft_coef=0.3")
    loss, _, grad, _ = run_loss(objective, batch, HPT_LOGP, [[0.0, 1.0]] * 6, plan)
    assert loss == pytest.approx(0.6, rel=1e-5)
    torch.testing.assert_close(grad[:, 1], torch.tensor([0, 0, -0.3, -A / 2, A / 2, 0]), atol=1e-5, rtol=0)


def test_hpt_gate_one_sends_both_prompts_to_sft():
    objective, batch, plan, info = hpt_case(1)
    assert info["hpt/sft_prompt_share"] == 1.0
    loss, _, grad, _ = run_loss(objective, batch, HPT_LOGP, [[0.0, 1.0]] * 6, plan)
    assert loss == pytest.approx((2.0 + 3.0) / 2)
    torch.testing.assert_close(grad[:, 1], torch.tensor([0, 0, -0.5, 0, 0, -0.5]))


def test_hpt_honours_kl_and_the_entropy_bonus_on_its_trained_tokens():
    objective, batch, plan, _ = hpt_case(0, "grpo.entropy_coef=0.001", "grpo.beta=0.1")
    assert objective.needs_reference
    batch.ref_logp = torch.tensor(HPT_LOGP) + math.log(2.0)  # k3 = 2 - ln 2 - 1 on every token
    loss, m, grad, egrad = run_loss(objective, batch, HPT_LOGP, [[0.0, 1.0]] * 6, plan)
    k3 = 1.0 - math.log(2.0)
    assert m["loss/kl"] == pytest.approx(k3, rel=1e-5)
    assert m["loss/entropy_bonus"] == pytest.approx(-0.001, rel=1e-5)
    assert loss == pytest.approx(2.0 + 0.1 * k3 - 0.001, rel=1e-5)
    # trained tokens: prompt 0's demonstration and prompt 1's rollouts; nothing reaches the others
    torch.testing.assert_close(egrad[:, 1], torch.tensor([0, 0, 1, 1, 1, 0.0]) * (-0.001 / 3))
    # d k3 / d logp = 1 - exp(ref - logp) = -1, times beta / 3
    torch.testing.assert_close(grad[:, 1], torch.tensor([0, 0, -1.0 - 0.1 / 3, -A / 2 - 0.1 / 3, A / 2 - 0.1 / 3, 0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("clip", [True, False])
def test_luffy_rollout_clip_and_the_released_scripts_unclipped_form(clip):
    objective, batch, plan, _ = prepared("luffy", "group.num_generations=2", f"grpo.clip={str(clip).lower()}")
    # a later update: rollout 0 (A > 0) has ratio e^0.5 = 1.65, outside the clip range [0.8, 1.2]
    batch.old_logp = torch.tensor(LOGP) - torch.tensor([[0.0, 0.5], [0.0, 0.0], [0.0, 0.0]])
    loss, m, grad, _ = run_loss(objective, batch, LOGP, ENTROPY, plan)
    a_pos, a_neg, ratio = 0.57735, -1.1547, math.exp(0.5)
    if clip:  # the clipped branch: a constant 1.2 A, no gradient
        assert grad[0, 1].item() == 0.0 and m["grpo/clip_fraction"] == pytest.approx(0.5)
        assert m["loss/on_policy"] == pytest.approx((-1.2 * a_pos - a_neg) / 3, rel=1e-4)
    else:  # -rho A on every rollout token
        assert grad[0, 1].item() == pytest.approx(-a_pos * ratio / 3, rel=1e-4) and m["grpo/clip_fraction"] == 0.0
        assert m["loss/on_policy"] == pytest.approx((-ratio * a_pos - a_neg) / 3, rel=1e-4)


@pytest.mark.parametrize("method", ["two_stage", "sasr"])
def test_step_switching_methods_take_the_entropy_bonus_on_rl_steps_only(method):
    objective = build_objective(load_config(overrides=[
        f"method={method}", "two_stage.sft_steps=1", "sasr.warmup_steps=1", "grpo.entropy_coef=0.01",
    ]))
    sft_batch = make_batch([[0, 1, 1]], is_demo=[True], group=[0], reward=[1.0])
    _, metrics, _, egrad = run_loss(objective, sft_batch, [[0.0, -1.0, -3.0]], [[0.0, 1.0, 1.0]], objective.step_plan("sft", {}))
    assert "loss/entropy_bonus" not in metrics and egrad is None
    rl_batch = make_batch(MASK[:2], is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0])
    loss, metrics, _, egrad = run_loss(objective, rl_batch, LOGP[:2], ENTROPY[:2], objective.step_plan("rl", {}))
    assert metrics["loss/entropy_bonus"] == pytest.approx(-0.01) and loss == pytest.approx(-0.01, abs=1e-6)
    torch.testing.assert_close(egrad[:, 1], torch.tensor([-0.005, -0.005]))


def test_static_mix_defaults_follow_luffys_rl_with_sft_loss_baseline():
    config = load_config(overrides=["method=static_mix"])
    assert config.static_mix.mu == 1.0 and config.grpo.entropy_coef == 0.001
    assert (config.group.num_generations, config.group.demos_per_prompt) == (7, 1)
    # rollouts-only statistics: the demonstration is outside the group (grpo_split)
    _, batch, _, _ = prepared("static_mix")
    torch.testing.assert_close(batch.advantage, torch.tensor([A, -A, A]), atol=1e-5, rtol=0)
