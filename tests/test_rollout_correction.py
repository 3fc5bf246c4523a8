"""The training-inference mismatch: its metrics and the truncated importance-sampling correction
(``grpo.rollout_is``), pinned to hand-computed values; the sampler's log-probs on the batch."""

from __future__ import annotations

import math

import pytest
import torch

from hybridrft.config import load_config
from hybridrft.objectives import build_objective
from hybridrft.ops import rollout_importance_weights, sampler_mismatch
from hybridrft.rollout import build_rollout_batch
from hybridrft.train.trainer import check_rollout_correction
from test_objectives import make_batch, run_loss

E = math.e
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, 0.0, 0.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5], [-1.2, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


@pytest.mark.parametrize(
    ("mode", "row0", "row1"),
    [
        # token ratios: e^0.5 = 1.649, e^-1 = 0.368, 1; row 1: e^1 = 2.718; cap 1.5
        ("token_truncate", [1.5, 1 / E, 1.0], 1.5),
        ("token_mask", [0.0, 1 / E, 1.0], 0.0),
        # sequence ratios: e^(0.5 - 1 + 0) = e^-0.5 for every token of row 0; e^1 for row 1
        ("sequence_truncate", [E**-0.5] * 3, 1.5),
        ("sequence_mask", [E**-0.5] * 3, 0.0),
    ],
)
def test_importance_weights_by_hand(mode, row0, row1):
    weights = rollout_importance_weights(OLD, SAMPLER, MASK, mode=mode, cap=1.5)
    expected = torch.tensor([row0, [row1, 1.0, 1.0]])  # weight 1 outside the mask
    torch.testing.assert_close(weights, expected)


def test_importance_weights_are_detached_and_reject_unknown_modes():
    old = OLD.clone().requires_grad_(True)
    assert not rollout_importance_weights(old, SAMPLER, MASK, mode="token_truncate", cap=2.0).requires_grad
    with pytest.raises(ValueError, match="token_clip"):
        rollout_importance_weights(OLD, SAMPLER, MASK, mode="token_clip", cap=2.0)


def test_mismatch_terms_by_hand():
    abs_diff, k3 = sampler_mismatch(OLD, SAMPLER)
    torch.testing.assert_close(abs_diff[0], torch.tensor([0.5, 1.0, 0.0]))
    # k3 = r - log r - 1 with log r = trainer - sampler
    torch.testing.assert_close(k3[0], torch.tensor([E**0.5 - 0.5 - 1, E**-1 + 1 - 1, 0.0]))


def _rollout_batch():
    batch = make_batch([[1, 1, 1], [1, 0, 0]], is_demo=[False, False], group=[0, 0], reward=[1.0, 0.0],
                       advantage=[1.0, -1.0])
    batch.sampler_logp = SAMPLER * MASK
    return batch


def test_grpo_term_weighted_by_truncated_importance_weights():
    config = load_config(overrides=["method=grpo", "grpo.rollout_is=token_truncate", "grpo.rollout_is_cap=1.5"])
    objective = build_objective(config)
    loss, metrics, grad, _ = run_loss(objective, _rollout_batch(), OLD.tolist(), [[1.0] * 3] * 2, objective.plan(1))
    # on-policy ratio 1: token t's term is -A w_t; token mean over 4 tokens
    w = [1.5, 1 / E, 1.0, 1.5]
    assert loss == pytest.approx((-(w[0] + w[1] + w[2]) + w[3]) / 4)
    torch.testing.assert_close(grad, torch.tensor([[-1.5, -1 / E, -1.0], [1.5, 0.0, 0.0]]) / 4)
    assert metrics["rollout_is/weight_mean"] == pytest.approx(sum(w) / 4)
    assert metrics["rollout_is/capped_frac"] == pytest.approx(2 / 4)


def test_mismatch_metrics_logged_with_the_correction_off():
    objective = build_objective(load_config(overrides=["method=grpo"]))
    loss, metrics, grad, _ = run_loss(objective, _rollout_batch(), OLD.tolist(), [[1.0] * 3] * 2, objective.plan(1))
    assert loss == pytest.approx((-3 + 1) / 4)  # no correction: every token weight 1
    assert metrics["mismatch/logp_abs_diff"] == pytest.approx((0.5 + 1.0 + 0.0 + 1.0) / 4)
    assert metrics["mismatch/logp_abs_diff_max"] == pytest.approx(1.0)
    k3 = (E**0.5 - 1.5) + (E**-1) + 0.0 + (E - 2)
    assert metrics["mismatch/k3_kl"] == pytest.approx(k3 / 4)
    assert "rollout_is/weight_mean" not in metrics


def test_srft_self_rollout_terms_weighted_by_the_correction():
    overrides = ["method=srft", "srft.normalisation=separate", "grpo.entropy_coef=0", "grpo.rollout_is=token_mask",
                 "grpo.rollout_is_cap=1.5"]
    objective = build_objective(load_config(overrides=overrides))
    batch = _rollout_batch()
    entropy = [[0.0] * 3] * 2  # w_RL = 0.1 exp(0) = 0.1
    loss, metrics, grad, _ = run_loss(objective, batch, OLD.tolist(), entropy, objective.plan(1))
    # y+ (reward 1): 0.1 * mean(w * -logp) over 3 tokens with w = (0, 1/e, 1); y-: mean(w * logp), w = 0
    positive = 0.1 * (0 * 1.0 + (1 / E) * 2.0 + 1.0 * 0.5) / 3
    assert metrics["loss/rl_self_pos"] == pytest.approx(positive)
    assert metrics["loss/rl_self_neg"] == pytest.approx(0.0)
    torch.testing.assert_close(grad[0], torch.tensor([0.0, -0.1 / E / 3, -0.1 / 3]))
    assert grad[1, 0] == 0.0


def test_correction_needs_a_sampler_that_records_logprobs():
    with pytest.raises(ValueError, match="native or vllm"):
        check_rollout_correction(load_config(overrides=["grpo.rollout_is=token_truncate", "rollout.backend=hf"]))
    with pytest.raises(ValueError, match="temperature"):
        check_rollout_correction(load_config(overrides=["grpo.rollout_is=token_truncate", "rollout.temperature=0"]))
    check_rollout_correction(load_config(overrides=["grpo.rollout_is=sequence_mask"]))
    with pytest.raises(ValueError, match="rollout_is"):
        load_config(overrides=["grpo.rollout_is=clip"])


def test_batch_carries_sampler_logprobs_of_rollouts_only():
    batch = build_rollout_batch(
        [[1, 2], [3]], [[4, 5], [6, 7, 8]], is_demo=[False, True], group=[0, 0], reward=[0.0, 1.0],
        truncated=[False, False], pad_id=0, sampler_logprobs=[[-0.5, -0.25], None],
    )
    torch.testing.assert_close(batch.sampler_logp, torch.tensor([[0.0, 0.0, -0.5, -0.25], [0.0] * 4]))
    assert batch.select([0]).sampler_logp.shape == (1, 4)
    missing = build_rollout_batch([[1]], [[4]], is_demo=[False], group=[0], reward=[0.0], truncated=[False],
                                  pad_id=0, sampler_logprobs=[None])
    assert missing.sampler_logp is None
