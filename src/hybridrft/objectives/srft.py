"""SRFT: Supervised Reinforcement Fine-Tuning (Fu et al. 2025, arXiv 2506.19767, Eq. 6-13).

One stage, every step, three terms on two kinds of data. For prompt ``x`` with rollouts
``y_1..y_n ~ pi_theta`` and demonstrations ``y*_1..y*_m``:

    A          = group advantage over the augmented group {y_k} u {y*_j}       (Eq. 7)
    L_SFT_demo = w_SFT * agg(-logp_t)                 on demonstration tokens
    L_RL_demo  = agg(-A * p_t)                        on demonstration tokens, p_t = exp(logp_t)
                                                      (behaviour probability 1, no clipping;
                                                       optional shaping p/(p+gamma) as in LUFFY)
    L_RL_self  = w_RL * agg_{y+}(-logp_t) + agg_{y-}(logp_t)    on rollouts
    L          = L_SFT_demo + L_RL_demo + L_RL_self

    w_SFT = sft_coef * sg(exp(sign * H)),  sft_coef = 0.5, sign = -1 (paper) or +1 (released code)
    w_RL  = rl_coef  * sg(exp(H)),         rl_coef  = 0.1

``H`` is the detached mean token entropy of the policy at the configured granularity: ``sequence``
(each sequence's own mean, default), ``token``, or ``batch`` (one mean over the whole step's tokens of
that term, measured in a no-grad pass before the update). ``y+`` are the correct rollouts (reward at
or above ``reward.correct_threshold``); with graded rewards (``positive_rule = auto`` and rewards
that are not all 0 or the threshold) the rollouts with positive advantage.

``self_rollout_loss = "advantage"`` replaces ``L_RL_self`` by the GRPO clipped term on all rollout
tokens, multiplied by ``w_RL`` on tokens of positive-advantage rollouts (the form reported for the
released code); ``y+`` are then the positive-advantage rollouts.
"""

from __future__ import annotations

import torch

from hybridrft.objectives.base import MIXED, Objective, StepPlan, masked_token_mean, register_objective, sequence_mask
from hybridrft.objectives.grpo import ROLLOUT, rollout_mask
from hybridrft.objectives.sft import DEMO, demo_mask
from hybridrft.ops import clipped_surrogate, entropy_for_weights, entropy_weight, group_advantages, shaped_probability

POSITIVE, NEGATIVE = "positive", "negative"


def positive_rollouts(batch, rule: str, correct_threshold: float) -> torch.Tensor:
    """``[N]`` bool: the rollouts that count as ``y+`` (demonstrations are never in it)."""
    if rule == "reward":
        positive = batch.reward >= correct_threshold
    elif rule == "advantage":
        positive = batch.advantage > 0
    else:
        raise ValueError(f"positive rule must be 'reward' or 'advantage', got {rule!r}")
    return positive & ~batch.is_demo


def resolve_positive_rule(rule: str, rewards: torch.Tensor, correct_threshold: float) -> str:
    """``auto``: judge by correctness when rewards are binary, by advantage when they are graded."""
    if rule != "auto":
        return rule
    binary = bool(((rewards == 0) | (rewards == correct_threshold)).all())
    return "reward" if binary else "advantage"


@register_objective
class SRFTObjective(Objective):
    name = "srft"

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.srft
        self.correct_threshold = config.reward.correct_threshold
        self._rule = "reward"  # resolved per step in prepare(), from the full batch's rewards

    def plan(self, step: int) -> StepPlan:
        return StepPlan(MIXED, rollouts_per_prompt=self.cfg.num_generations, demos_per_prompt=self.cfg.demos_per_prompt)

    def prepare(self, batch, plan):
        in_stats = None if self.cfg.include_demos_in_stats else ~batch.is_demo
        batch.advantage = group_advantages(batch.reward, batch.group, in_stats=in_stats, scale=self.cfg.advantage_scale)
        if self.cfg.self_rollout_loss == "advantage":
            self._rule = "advantage"
        else:
            self._rule = resolve_positive_rule(self.cfg.positive_rule, batch.reward[~batch.is_demo], self.correct_threshold)
        return {"srft/positives_by_advantage": float(self._rule == "advantage")}

    def masks(self, batch, plan):
        positive = positive_rollouts(batch, self._rule, self.correct_threshold)
        return {
            DEMO: demo_mask(batch),
            ROLLOUT: rollout_mask(batch),
            POSITIVE: sequence_mask(positive, batch.loss_mask),
            NEGATIVE: sequence_mask(~positive & ~batch.is_demo, batch.loss_mask),
        }

    def entropy_means_needed(self, plan):
        return (DEMO, POSITIVE) if self.cfg.entropy_granularity == "batch" else ()

    def _weight_entropy(self, entropy, mask, totals, name):
        return entropy_for_weights(
            entropy, mask, self.cfg.entropy_granularity, batch_mean=totals.entropy_mean.get(name)
        )

    def loss(self, batch, out, totals, plan):
        cfg = self.cfg
        masks = self.masks(batch, plan)
        logp, advantage = out.logp, batch.advantage.unsqueeze(-1)

        # demonstrations: entropy-weighted SFT plus off-policy RL with behaviour probability 1
        w_sft = entropy_weight(
            self._weight_entropy(out.entropy, masks[DEMO], totals, DEMO), coef=cfg.sft_coef, sign=cfg.sft_entropy_sign
        )
        sft_demo = self.agg(w_sft * -logp, masks[DEMO], totals[DEMO])
        rl_demo = self.agg(-advantage * shaped_probability(logp, cfg.policy_shaping_gamma), masks[DEMO], totals[DEMO])
        metrics = {
            "loss/sft_demo": sft_demo.detach(),
            "loss/rl_demo": rl_demo.detach(),
            "srft/w_sft": masked_token_mean(w_sft, masks[DEMO], totals[DEMO]),
        }

        # own rollouts; w_RL is measured on (and, in "advantage" form, applied to) the y+ tokens
        w_rl = entropy_weight(
            self._weight_entropy(out.entropy, masks[POSITIVE], totals, POSITIVE), coef=cfg.rl_coef, sign=1.0
        )
        if totals[POSITIVE].num_tokens:  # undefined (not 0) when no rollout is positive
            metrics["srft/w_rl"] = masked_token_mean(w_rl, masks[POSITIVE], totals[POSITIVE])
        if cfg.self_rollout_loss == "paper":
            rl_pos = self.agg(w_rl * -logp, masks[POSITIVE], totals[POSITIVE])
            rl_neg = self.agg(logp, masks[NEGATIVE], totals[NEGATIVE])
            rl_self = rl_pos + rl_neg
            metrics["loss/rl_self_pos"] = rl_pos.detach()
            metrics["loss/rl_self_neg"] = rl_neg.detach()
        else:
            per_token, _ = clipped_surrogate(
                logp, logp.detach(), advantage, eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high
            )
            scale = torch.where(masks[POSITIVE], w_rl, torch.ones_like(w_rl))
            rl_self = self.agg(scale * per_token, masks[ROLLOUT], totals[ROLLOUT])
        metrics["loss/rl_self"] = rl_self.detach()
        return sft_demo + rl_demo + rl_self, metrics
