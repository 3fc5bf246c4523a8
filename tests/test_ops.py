"""ops: every function against values worked out by hand on tiny tensors, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrft.ops import (
    MaskTotals,
    aggregate,
    clipped_surrogate,
    entropy_for_weights,
    entropy_weight,
    group_advantages,
    k3_kl,
    logprobs_and_entropy_from_logits,
    masked_sequence_mean,
    shaped_probability,
    token_logprobs_and_entropy,
)

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "expected", "grad"),
    [
        # (1+2+3+4+5) / 5 tokens
        ("token_mean", 3.0, [[1 / 5] * 3, [1 / 5, 1 / 5, 0]]),
        # (mean(1,2,3) + mean(4,5)) / 2 sequences = (2 + 4.5) / 2
        ("seq_mean_token_mean", 3.25, [[1 / 6] * 3, [1 / 4, 1 / 4, 0]]),
        # (6 + 9) / 2 sequences
        ("seq_mean_token_sum", 7.5, [[1 / 2] * 3, [1 / 2, 1 / 2, 0]]),
        # 15 / (2 sequences * L_max 4)
        ("seq_mean_token_sum_norm", 1.875, [[1 / 8] * 3, [1 / 8, 1 / 8, 0]]),
    ],
)
def test_aggregate_modes_values_and_gradients(mode, expected, grad):
    values = VALUES.clone().requires_grad_(True)
    out = aggregate(values, MASK, mode, max_len=4)
    assert out.item() == pytest.approx(expected)
    out.backward()
    torch.testing.assert_close(values.grad, torch.tensor(grad))


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_aggregate_of_micro_batches_sums_to_full_batch(mode):
    totals = MaskTotals.of(MASK)
    full = aggregate(VALUES, MASK, mode, max_len=4)
    parts = sum(aggregate(VALUES[i : i + 1], MASK[i : i + 1], mode, totals=totals, max_len=4) for i in range(2))
    assert parts.item() == pytest.approx(full.item())


def test_aggregate_rejects_unknown_mode_and_missing_max_len():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(VALUES, MASK, "seq_mean_token_sum_norm")


def test_aggregate_of_empty_mask_is_zero_with_gradient_path():
    values = VALUES.clone().requires_grad_(True)
    out = aggregate(values, torch.zeros_like(MASK), "token_mean")
    out.backward()
    assert out.item() == 0.0 and torch.all(values.grad == 0)


def test_group_advantages_group_scale():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, group)
    # group 0: mean 0.5, unbiased std sqrt(1/3) -> +-0.5/0.57735 = +-0.86603; group 1: all equal -> 0
    expected = torch.tensor([0.86603, -0.86603, -0.86603, 0.86603, 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected, atol=1e-4, rtol=0)


def test_group_advantages_none_and_batch_scale():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    group = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(group_advantages(rewards, group, scale="none"), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    # batch std of (1, 0, 1, 1): mean 0.75, unbiased var (3 * 0.0625 + 0.5625) / 3 = 0.25 -> std 0.5
    torch.testing.assert_close(
        group_advantages(rewards, group, scale="batch"), torch.tensor([1.0, -1.0, 0.0, 0.0]), atol=1e-5, rtol=0
    )


def test_group_advantages_statistics_subset():
    # the last member (a demonstration) is scored but kept out of the baseline (LUFFY-style)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    group = torch.zeros(4, dtype=torch.long)
    in_stats = torch.tensor([True, True, True, False])
    adv = group_advantages(rewards, group, in_stats=in_stats)
    # stats over (1, 0, 0): mean 1/3, unbiased std sqrt(1/3)
    expected = torch.tensor([1.1547, -0.57735, -0.57735, 1.1547])
    torch.testing.assert_close(adv, expected, atol=1e-4, rtol=0)


def test_group_advantages_with_no_spread_in_the_statistics():
    # every rollout failed, the demonstration (outside the statistics) succeeded: std 0 -> divide by 1
    rewards = torch.tensor([0.0, 0.0, 1.0])
    adv = group_advantages(rewards, torch.zeros(3, dtype=torch.long), in_stats=torch.tensor([True, True, False]))
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    # a single member in the statistics: its own advantage is 0, the others' r - r_member
    adv = group_advantages(torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.long), in_stats=torch.tensor([False, True]))
    torch.testing.assert_close(adv, torch.tensor([1.0, 0.0]), atol=1e-5, rtol=0)


def test_group_advantages_rejects_unknown_scale():
    with pytest.raises(ValueError, match="advantage scale"):
        group_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), scale="global")


def test_clipped_surrogate_values_and_gradients():
    # ratio 1.5 with eps 0.2: positive advantage takes the clipped branch (no gradient),
    # negative advantage the unclipped one (gradient -A * ratio = 1.5)
    logp = torch.tensor([[math.log(1.5), math.log(1.5)]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 1.5]]))
    assert clipped.tolist() == [[True, False]]
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.5]]))


def test_clipped_surrogate_asymmetric_clip_low():
    # ratio 0.5 with negative advantage: clip at 1 - eps_low = 0.7 -> -min(-0.5, -0.7) = 0.7
    logp = torch.tensor([[math.log(0.5)]])
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([[-1.0]]), eps_low=0.3, eps_high=0.28)
    assert loss.item() == pytest.approx(0.7) and clipped.item()


def test_clipped_surrogate_on_policy_gradient_is_minus_advantage():
    logp = torch.tensor([[-0.7, -2.0]], requires_grad=True)
    adv = torch.tensor([[2.0], ])
    loss, _ = clipped_surrogate(logp, logp.detach(), adv)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-2.0, -2.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, -2.0]]))


def test_k3_kl_value_and_zero_at_equality():
    # delta = ln(0.25) - ln(0.5) = -ln 2: 0.5 + ln 2 - 1 = 0.193147
    assert k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))).item() == pytest.approx(0.193147, abs=1e-6)
    assert k3_kl(torch.tensor(-1.3), torch.tensor(-1.3)).item() == 0.0


def test_shaped_probability_value_and_gradient():
    logp = torch.tensor(math.log(0.3), requires_grad=True)
    value = shaped_probability(logp, 0.1)
    assert value.item() == pytest.approx(0.75)
    value.backward()
    # d/dlogp p/(p+g) = p g / (p+g)^2 = 0.03 / 0.16
    assert logp.grad.item() == pytest.approx(0.1875)
    assert shaped_probability(torch.tensor(math.log(0.3)), None).item() == pytest.approx(0.3)


def test_logprobs_and_entropy_from_logits_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    logp, entropy = logprobs_and_entropy_from_logits(logits, torch.tensor([[0]]))
    assert logp.item() == pytest.approx(math.log(0.5))
    # -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.5 ln 2
    assert entropy.item() == pytest.approx(1.5 * math.log(2))


def test_token_logprobs_align_with_input_ids(tiny_tokenizer):
    from conftest import build_tiny_llama

    model = build_tiny_llama(tiny_tokenizer)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 9))
    mask = torch.ones_like(ids)
    logp, entropy = token_logprobs_and_entropy(model, ids, mask, chunk_size=4)
    full = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    expected = full[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp[:, 1:], expected, atol=1e-5, rtol=1e-5)
    assert torch.all(logp[:, 0] == 0) and entropy.shape == (2, 9)
    torch.testing.assert_close(entropy[:, 1:], -(full.exp() * full).sum(-1)[:, :-1], atol=1e-5, rtol=1e-5)


def test_entropy_for_weights_granularities():
    entropy = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(masked_sequence_mean(entropy.detach(), mask), torch.tensor([2.0, 2.0]))
    seq = entropy_for_weights(entropy, mask, "sequence")
    torch.testing.assert_close(seq, torch.full((2, 3), 2.0))
    tok = entropy_for_weights(entropy, mask, "token")
    torch.testing.assert_close(tok, entropy.detach())
    batch = entropy_for_weights(entropy, mask, "batch", batch_mean=1.25)
    torch.testing.assert_close(batch, torch.full((2, 3), 1.25))
    assert not seq.requires_grad and not tok.requires_grad
    with pytest.raises(ValueError, match="batch mean"):
        entropy_for_weights(entropy, mask, "batch")


def test_entropy_weights_match_srft_definitions():
    h = torch.tensor([0.0, 1.0, 2.0])
    # w_SFT = 0.5 exp(-H), w_RL = 0.1 exp(H)
    torch.testing.assert_close(entropy_weight(h, coef=0.5, sign=-1), torch.tensor([0.5, 0.18394, 0.067668]), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy_weight(h, coef=0.1, sign=1), torch.tensor([0.1, 0.271828, 0.738906]), atol=1e-5, rtol=0)


def test_k3_is_clamped_as_verls_low_var_kl():
    # ref - logp = 30 is clamped to 20 before exp, and the estimate to 10
    assert k3_kl(torch.tensor(-30.0), torch.tensor(0.0)).item() == 10.0
    # ref - logp = -50 is clamped to -20, and e^-20 + 20 - 1 = 19 to 10
    assert k3_kl(torch.tensor(0.0), torch.tensor(-50.0)).item() == 10.0
    # inside the bounds it is the plain estimator: ref - logp = 2 -> e^2 - 3 = 4.389
    assert k3_kl(torch.tensor(-2.0), torch.tensor(0.0)).item() == pytest.approx(math.exp(2) - 3, rel=1e-6)
    logp = torch.tensor(-30.0, requires_grad=True)
    k3_kl(logp, torch.tensor(0.0)).backward()
    assert logp.grad.item() == 0.0  # a clamped estimate sends no gradient


def test_group_of_one_gets_its_reward_as_advantage():
    # verl / LUFFY compute_grpo_outcome_advantage: a single member has mean 0 and std 1
    rewards, group = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 1, 1])
    adv = group_advantages(rewards, group)
    assert adv[0].item() == pytest.approx(1.0 / (1.0 + 1e-6))
    torch.testing.assert_close(adv[1:], torch.tensor([-0.70711, 0.70711]), atol=1e-4, rtol=0)
    assert group_advantages(torch.tensor([0.7]), torch.tensor([0]), scale="none").item() == pytest.approx(0.7)
