"""Objectives: each loss term and weight pinned to hand-computed values, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrft.config import load_config
from hybridrft.objectives import BatchTotals, PolicyOutputs, build_objective
from hybridrft.objectives.sasr import CHOICE_RULES, sft_probability
from hybridrft.ops import MaskTotals
from hybridrft.rollout import RolloutBatch


def make_batch(loss_mask_rows, *, is_demo, group, reward, advantage=None) -> RolloutBatch:
    loss_mask = torch.tensor(loss_mask_rows, dtype=torch.bool)
    n, t = loss_mask.shape
    return RolloutBatch(
        input_ids=torch.zeros(n, t, dtype=torch.long),
        attention_mask=torch.ones(n, t, dtype=torch.long),
        loss_mask=loss_mask,
        is_demo=torch.tensor(is_demo),
        group=torch.tensor(group),
        reward=torch.tensor(reward, dtype=torch.float32),
        truncated=torch.zeros(n, dtype=torch.bool),
        advantage=None if advantage is None else torch.tensor(advantage, dtype=torch.float32),
    )


def prepared(objective, batch, plan):
    """``prepare_batch`` as the trainer calls it; an advantage the test set by hand is kept."""
    given = batch.advantage
    objective.prepare_batch(batch, plan)
    if given is not None:
        batch.advantage = given
    return batch


def run_loss(objective, batch, logp, entropy, plan, entropy_mean=None):
    """Full-batch loss the way the trainer computes it, returning (loss, metrics, logp.grad, entropy.grad)."""
    logp = torch.tensor(logp, requires_grad=True)
    entropy = torch.tensor(entropy, requires_grad=True)
    if not batch.masks:
        prepared(objective, batch, plan)
    totals = BatchTotals({k: MaskTotals.of(m) for k, m in batch.masks.items()}, entropy_mean or {})
    loss, metrics = objective.step_loss(batch, PolicyOutputs(logp, entropy), totals, plan)
    loss.backward()
    return loss.item(), {k: float(v) for k, v in metrics.items()}, logp.grad, entropy.grad


# ---------------------------------------------------------------- SFT

def test_sft_loss_and_gradient():
    objective = build_objective(load_config(overrides=["method=sft"]))
    batch = make_batch([[0, 1, 1]], is_demo=[True], group=[0], reward=[1.0])
    loss, metrics, grad, _ = run_loss(objective, batch, [[0.0, -1.0, -3.0]], [[0.0, 1.0, 1.0]], objective.plan(1))
    assert loss == pytest.approx(2.0) and metrics["loss/sft"] == pytest.approx(2.0)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.5, -0.5]]))


# ---------------------------------------------------------------- GRPO

# two rollouts: 3 and 1 completion tokens, advantages +1 and -1, ratio 1 (on-policy)
GRPO_MASK = [[1, 1, 1, 0], [0, 1, 0, 0]]


@pytest.mark.parametrize(
    ("mode", "expected", "grad0", "grad1"),
    [
        ("token_mean", (-3 + 1) / 4, -1 / 4, 1 / 4),
        ("seq_mean_token_mean", (-1 + 1) / 2, -1 / 6, 1 / 2),
        ("seq_mean_token_sum", (-3 + 1) / 2, -1 / 2, 1 / 2),
        ("seq_mean_token_sum_norm", (-3 + 1) / (2 * 4), -1 / 8, 1 / 8),
    ],
)
def test_grpo_loss_under_each_aggregation(mode, expected, grad0, grad1):
    config = load_config(overrides=["method=grpo", f"loss.aggregation={mode}", "loss.max_completion_length=4"])
    objective = build_objective(config)
    batch = make_batch(GRPO_MASK, is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0], advantage=[1.0, -1.0])
    logp = [[-0.5, -1.0, -2.0, 0.0], [-0.3, -0.7, 0.0, 0.0]]
    loss, metrics, grad, _ = run_loss(objective, batch, logp, [[1.0] * 4] * 2, objective.plan(1))
    assert loss == pytest.approx(expected)
    assert metrics["loss/policy"] == pytest.approx(expected)
    mask = torch.tensor(GRPO_MASK, dtype=torch.float32)
    expected_grad = mask * torch.tensor([[grad0], [grad1]])
    torch.testing.assert_close(grad, expected_grad)


def test_grpo_prepare_sets_group_advantages():
    objective = build_objective(load_config(overrides=["method=grpo"]))
    batch = make_batch(GRPO_MASK, is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0])
    objective.prepare_batch(batch, objective.plan(1))
    # mean 0.5, unbiased std 0.7071 -> +-0.7071
    torch.testing.assert_close(batch.advantage, torch.tensor([0.70711, -0.70711]), atol=1e-4, rtol=0)


def test_grpo_kl_and_entropy_terms():
    config = load_config(overrides=["method=grpo", "grpo.beta=0.1", "grpo.entropy_coef=0.01"])
    objective = build_objective(config)
    assert objective.needs_reference
    batch = make_batch([[0, 1]], is_demo=[False], group=[0], reward=[1.0], advantage=[0.0])
    batch.ref_logp = torch.tensor([[0.0, math.log(0.25)]])
    loss, metrics, grad, egrad = run_loss(objective, batch, [[0.0, math.log(0.5)]], [[0.0, 2.0]], objective.plan(1))
    # k3 = 0.5 + ln 2 - 1 = 0.193147; bonus = -0.01 * 2
    assert metrics["loss/kl"] == pytest.approx(0.193147, abs=1e-6)
    assert metrics["loss/entropy_bonus"] == pytest.approx(-0.02)
    assert loss == pytest.approx(0.1 * 0.193147 - 0.02, abs=1e-6)
    # d k3 / d logp = 1 - exp(ref - logp) = 0.5, times beta; entropy gets -c_H
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.05]]))
    torch.testing.assert_close(egrad, torch.tensor([[0.0, -0.01]]))


# ---------------------------------------------------------------- SRFT

# one prompt: rollout 0 correct, rollout 1 wrong, one demonstration; two completion tokens each
SRFT_MASK = [[0, 1, 1], [0, 1, 1], [0, 1, 1]]
SRFT_LOGP = [[0.0, -1.0, -2.0], [0.0, -0.5, -1.5], [0.0, -0.2, -0.4]]
SRFT_ENTROPY = [[0.0, 1.0, 3.0], [0.0, 0.5, 0.5], [0.0, 0.5, 1.5]]


def srft_case(*overrides):
    """SRFT on the case above; the entropy bonus is off so that the terms add up to the loss
    (the bonus has its own test)."""
    objective = build_objective(load_config(overrides=["method=srft", "grpo.entropy_coef=0", *overrides]))
    batch = make_batch(SRFT_MASK, is_demo=[False, False, True], group=[0, 0, 0], reward=[1.0, 0.0, 1.0])
    plan = objective.plan(1)
    objective.prepare_batch(batch, plan)
    return objective, batch, plan


def test_srft_augmented_group_advantage():
    _, batch, _ = srft_case()
    # rewards (1, 0, 1): mean 2/3, unbiased std sqrt(1/3)
    torch.testing.assert_close(batch.advantage, torch.tensor([0.57735, -1.1547, 0.57735]), atol=1e-4, rtol=0)
    _, batch, _ = srft_case("group.advantage_stats=rollouts")
    torch.testing.assert_close(batch.advantage, torch.tensor([0.70711, -0.70711, 0.70711]), atol=1e-4, rtol=0)
    # the released scripts' grpo_use_std=False: reward minus the augmented group's mean
    _, batch, _ = srft_case("group.advantage_scale=none")
    torch.testing.assert_close(batch.advantage, torch.tensor([1 / 3, -2 / 3, 1 / 3]), atol=1e-6, rtol=0)


def test_srft_joint_normalisation_is_one_token_mean_over_rl_tokens():
    """The default: every rollout token and every demonstration RL token in one token mean (6 tokens),
    -w_RL logp on y+, +logp on y-; the weighted SFT term a token mean over the 2 demonstration tokens."""
    objective, batch, plan = srft_case()
    assert objective.config.srft.normalisation == "joint"
    loss, m, grad, _ = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    w_sft, w_rl, a_demo = 0.5 * math.exp(-1.0), 0.1 * math.exp(2.0), 0.57735
    sft_demo = w_sft * (0.2 + 0.4) / 2
    rl_demo = -a_demo * (math.exp(-0.2) + math.exp(-0.4)) / 6
    rl_pos = w_rl * (1.0 + 2.0) / 6
    rl_neg = (-0.5 - 1.5) / 6
    assert m["loss/sft_demo"] == pytest.approx(sft_demo, rel=1e-5)
    assert m["loss/rl_demo"] == pytest.approx(rl_demo, rel=1e-4)
    assert m["loss/rl_self_pos"] == pytest.approx(rl_pos, rel=1e-5)
    assert m["loss/rl_self_neg"] == pytest.approx(rl_neg, rel=1e-5)
    assert loss == pytest.approx(sft_demo + rl_demo + rl_pos + rl_neg, rel=1e-4)
    expected = torch.tensor(
        [
            [0.0, -w_rl / 6, -w_rl / 6],
            [0.0, 1 / 6, 1 / 6],
            [0.0, -w_sft / 2 - a_demo * math.exp(-0.2) / 6, -w_sft / 2 - a_demo * math.exp(-0.4) / 6],
        ]
    )
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)
    # the y- term is unbounded below: its smallest log-prob is logged
    assert m["srft/negative_logp_min"] == pytest.approx(-1.5)


def test_srft_entropy_bonus_covers_every_completion_token():
    objective, batch, plan = srft_case("grpo.entropy_coef=0.001")
    _, m, _, egrad = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    # the released scripts: -0.001 * token mean of H over all 6 response tokens, demonstrations included
    assert m["loss/entropy_bonus"] == pytest.approx(-0.001 * (1 + 3 + 0.5 + 0.5 + 0.5 + 1.5) / 6, rel=1e-5)
    torch.testing.assert_close(egrad, torch.tensor([[0.0, 1, 1]] * 3) * (-0.001 / 6))


def test_srft_terms_weights_and_gradients_sequence_granularity():
    objective, batch, plan = srft_case("srft.normalisation=separate")
    loss, m, grad, egrad = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    w_sft = 0.5 * math.exp(-1.0)  # demo mean entropy (0.5 + 1.5) / 2 = 1
    w_rl = 0.1 * math.exp(2.0)  # positive rollout mean entropy (1 + 3) / 2 = 2
    a_demo = 0.57735
    sft_demo = w_sft * (0.2 + 0.4) / 2
    rl_demo = -a_demo * (math.exp(-0.2) + math.exp(-0.4)) / 2
    rl_pos = w_rl * (1.0 + 2.0) / 2
    rl_neg = (-0.5 - 1.5) / 2
    assert m["srft/w_sft"] == pytest.approx(w_sft, rel=1e-5)
    assert m["srft/w_rl"] == pytest.approx(w_rl, rel=1e-5)
    assert m["loss/sft_demo"] == pytest.approx(sft_demo, rel=1e-5)
    assert m["loss/rl_demo"] == pytest.approx(rl_demo, rel=1e-4)
    assert m["loss/rl_self_pos"] == pytest.approx(rl_pos, rel=1e-5)
    assert m["loss/rl_self_neg"] == pytest.approx(rl_neg, rel=1e-5)
    assert loss == pytest.approx(sft_demo + rl_demo + rl_pos + rl_neg, rel=1e-4)
    expected = torch.tensor(
        [
            [0.0, -w_rl / 2, -w_rl / 2],
            [0.0, 0.5, 0.5],
            [0.0, -w_sft / 2 - a_demo * math.exp(-0.2) / 2, -w_sft / 2 - a_demo * math.exp(-0.4) / 2],
        ]
    )
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)
    assert egrad is None  # the weights are stop-gradient: no gradient reaches the entropy


def test_srft_weights_token_granularity():
    objective, batch, plan = srft_case("srft.entropy_granularity=token", "srft.normalisation=separate")
    _, m, grad, _ = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    w_sft = [0.5 * math.exp(-0.5), 0.5 * math.exp(-1.5)]
    w_rl = [0.1 * math.exp(1.0), 0.1 * math.exp(3.0)]
    assert m["loss/sft_demo"] == pytest.approx((w_sft[0] * 0.2 + w_sft[1] * 0.4) / 2, rel=1e-5)
    assert m["srft/w_sft"] == pytest.approx(sum(w_sft) / 2, rel=1e-5)
    assert m["srft/w_rl"] == pytest.approx(sum(w_rl) / 2, rel=1e-5)
    torch.testing.assert_close(grad[0, 1:], -torch.tensor(w_rl) / 2)


def test_srft_weights_batch_granularity_use_full_batch_entropy():
    objective, batch, plan = srft_case("srft.entropy_granularity=batch")
    assert set(objective.entropy_means_needed(plan)) == {"demo", "positive"}
    _, m, _, _ = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan, entropy_mean={"demo": 2.0, "positive": 1.0})
    assert m["srft/w_sft"] == pytest.approx(0.5 * math.exp(-2.0), rel=1e-5)
    assert m["srft/w_rl"] == pytest.approx(0.1 * math.exp(1.0), rel=1e-5)


def test_srft_sft_entropy_sign_plus_one():
    objective, batch, plan = srft_case("srft.sft_entropy_sign=1")
    _, m, _, _ = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    assert m["srft/w_sft"] == pytest.approx(0.5 * math.exp(1.0), rel=1e-5)


def test_srft_policy_shaping_on_demonstrations():
    objective, batch, plan = srft_case("srft.policy_shaping_gamma=0.1", "srft.normalisation=separate")
    _, m, _, _ = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    p = [math.exp(-0.2), math.exp(-0.4)]
    assert m["loss/rl_demo"] == pytest.approx(-0.57735 * sum(x / (x + 0.1) for x in p) / 2, rel=1e-4)


def test_srft_advantage_form_of_self_rollout_loss():
    objective, batch, plan = srft_case("srft.self_rollout_loss=advantage", "srft.normalisation=separate")
    _, m, grad, _ = run_loss(objective, batch, SRFT_LOGP, SRFT_ENTROPY, plan)
    w_rl = 0.1 * math.exp(2.0)
    # on-policy GRPO term -A per token; the positive rollout's tokens are scaled by w_RL
    assert m["loss/rl_self"] == pytest.approx((2 * w_rl * -0.57735 + 2 * 1.1547) / 4, rel=1e-4)
    torch.testing.assert_close(grad[0, 1:], torch.full((2,), -w_rl * 0.57735 / 4), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad[1, 1:], torch.full((2,), 1.1547 / 4), atol=1e-5, rtol=1e-4)


def test_srft_graded_rewards_use_positive_advantage():
    objective = build_objective(load_config(overrides=["method=srft"]))
    batch = make_batch(SRFT_MASK, is_demo=[False, False, True], group=[0, 0, 0], reward=[0.7, 0.2, 1.0])
    plan = objective.plan(1)
    objective.prepare_batch(batch, plan)
    masks = batch.masks
    # mean 0.633: rollout 0 has positive advantage, rollout 1 negative
    assert masks["positive"][0].any() and not masks["positive"][1].any()
    assert masks["negative"][1].any() and not masks["negative"][2].any()


def test_srft_positives_are_judged_per_group_and_a_full_reward_is_never_negative():
    """Group 0 graded (0.7, 0.2, demo 1.0), group 1 all correct at 1.0 (advantage 0), group 2 binary
    (1, 0, demo 1). A graded group elsewhere in the batch changes nothing in groups 1 and 2."""
    objective = build_objective(load_config(overrides=["method=srft"]))
    rows = [[0, 1, 1]] * 9
    batch = make_batch(
        rows, is_demo=[False, False, True] * 3, group=[0, 0, 0, 1, 1, 1, 2, 2, 2],
        reward=[0.7, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
    )
    metrics = objective.prepare_batch(batch, objective.plan(1))
    positive = batch.masks["positive"].any(-1).tolist()
    negative = batch.masks["negative"].any(-1).tolist()
    assert batch.advantage[3].item() == batch.advantage[4].item() == 0.0  # all correct: advantage 0
    assert positive == [True, False, False, True, True, False, True, False, False]
    assert negative == [False, True, False, False, False, False, False, True, False]
    assert metrics["srft/positives_by_advantage"] == pytest.approx(1 / 3)  # group 0 only
    # the explicit advantage rule keeps a full reward out of y- too
    objective = build_objective(load_config(overrides=["method=srft", "srft.positive_rule=advantage"]))
    objective.prepare_batch(batch, objective.plan(1))
    assert batch.masks["positive"].any(-1).tolist() == positive


def test_srft_micro_batches_sum_to_the_full_batch_loss():
    objective, batch, plan = srft_case("grpo.entropy_coef=0.001")
    totals = BatchTotals({k: MaskTotals.of(m) for k, m in batch.masks.items()})
    logp, entropy = torch.tensor(SRFT_LOGP), torch.tensor(SRFT_ENTROPY)
    full, _ = objective.step_loss(batch, PolicyOutputs(logp, entropy), totals, plan)
    parts = 0.0
    for rows in ([0, 2], [1]):
        micro = batch.select(rows)
        loss, _ = objective.step_loss(micro, PolicyOutputs(logp[rows], entropy[rows]), totals, plan)
        parts += loss.item()
    assert parts == pytest.approx(full.item(), rel=1e-6)


# ---------------------------------------------------------------- SASR

def test_sasr_probability_rule():
    assert sft_probability(2.0, 2.0, 1.0) == 0.5
    assert sft_probability(1.0, 2.0, 1.0) == pytest.approx(1 / 3)
    assert sft_probability(1.0, 2.0, 0.5) == 0.5
    assert sft_probability(0.0, 0.0, 1.0) == 1.0
    assert "grad_norm" in CHOICE_RULES


def sasr_run(objective, norms):
    """Drive plan/after_step with given gradient norms; return the choices and p_t values."""
    choices, probabilities = [], []
    for step, norm in enumerate(norms, start=1):
        plan = objective.plan(step)
        choices.append(plan.kind)
        probabilities.append(plan.info["sasr/p_t"])
        objective.after_step(step, plan, norm)
    return choices, probabilities


def test_sasr_choices_for_given_norms_and_seed():
    objective = build_objective(load_config(overrides=["method=sasr", "sasr.warmup_steps=2", "train.seed=0"]))
    norms = [4.0, 2.0, 1.0, 9.0, 1.0, 1.0]
    choices, probabilities = sasr_run(objective, norms)
    # torch.Generator().manual_seed(0) draws u = 0.4963, 0.7682, 0.0885, 0.1320
    # step 3: p = 2 / (2 + 2) = 0.5, u = 0.4963 -> sft, G_sft = 1
    # step 4: p = 1 / (1 + 2) = 1/3, u = 0.7682 -> rl (G_sft stays 1: only SFT steps update it)
    # step 5: p = 1/3, u = 0.0885 -> sft; step 6: p = 1/3, u = 0.1320 -> sft
    assert choices == ["sft", "sft", "sft", "rl", "sft", "sft"]
    assert probabilities == pytest.approx([1.0, 1.0, 0.5, 1 / 3, 1 / 3, 1 / 3])
    assert objective.state.g_warmup == 2.0
    # step 7: p = 1/3, u = 0.3074 -> sft: the plan asks for demonstrations, no rollouts
    plan = objective.plan(7)
    assert (plan.kind, plan.rollouts_per_prompt, plan.demos_per_prompt) == ("sft", 0, 1)
    assert plan.info["sasr/u"] == pytest.approx(0.30742, abs=1e-5)


def test_sasr_state_dict_resumes_the_same_choices():
    config = load_config(overrides=["method=sasr", "sasr.warmup_steps=1", "train.seed=3"])
    norms = [1.0, 0.5, 2.0, 0.1, 3.0, 0.2, 0.7, 1.5]
    straight, _ = sasr_run(build_objective(config), norms)

    first = build_objective(config)
    head, _ = sasr_run(first, norms[:4])
    second = build_objective(config)
    second.load_state_dict(first.state_dict())
    tail = []
    for step, norm in enumerate(norms[4:], start=5):
        plan = second.plan(step)
        tail.append(plan.kind)
        second.after_step(step, plan, norm)
    assert head + tail == straight
    assert second.state.choices == straight


def test_sasr_steps_use_sft_and_grpo_losses():
    objective = build_objective(load_config(overrides=["method=sasr", "sasr.warmup_steps=1"]))
    sft_plan = objective.plan(1)
    batch = make_batch([[0, 1, 1]], is_demo=[True], group=[0], reward=[1.0])
    loss, metrics, _, _ = run_loss(objective, batch, [[0.0, -1.0, -3.0]], [[0.0] * 3], sft_plan)
    assert loss == pytest.approx(2.0) and "loss/sft" in metrics
    # an RL step: the GRPO term over the rollouts with group advantages (+-0.7071), no SFT term
    rl_plan = objective.step_plan("rl", {})
    assert (rl_plan.rollouts_per_prompt, rl_plan.demos_per_prompt) == (objective.config.group.num_generations, 0)
    batch = make_batch(GRPO_MASK, is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0])
    loss, metrics, grad, _ = run_loss(objective, batch, [[-0.5, -1.0, -2.0, 0.0], [-0.3, -0.7, 0.0, 0.0]], [[1.0] * 4] * 2, rl_plan)
    assert "loss/sft" not in metrics and loss == pytest.approx(-0.70711 * (3 - 1) / 4, abs=1e-4)
    torch.testing.assert_close(grad, torch.tensor(GRPO_MASK) * torch.tensor([[-0.70711 / 4], [0.70711 / 4]]), atol=1e-5, rtol=0)


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'sasr'"):
        build_objective(load_config(overrides=["method=sasrr"]))
