"""LUFFY: Learning to reason Under oFF-policY guidance (Yan et al. 2025, arXiv 2504.14945).

Each group holds ``num_generations - demos_per_group`` rollouts of the current policy and
``demos_per_group`` off-policy demonstrations (default 7 + 1). One group advantage is computed for
all members, with the mean and std taken over the rollouts only (``advantage_stats = rollouts``,
as DESIGN.md specifies) or over the whole mixed group (``group``). Then, over all completion tokens
of the batch together:

    rollout token:       -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)       (GRPO)
    demonstration token: -A * f(p_t),  f(p) = p / (p + gamma),  p_t = exp(logp_t)       (policy shaping)

Demonstrations are treated as sampled with behaviour probability 1, so their importance ratio is
``p_t`` itself, and they are not clipped. The shaping ``f`` (``gamma = 0.1``) raises the gradient
on low-probability tokens, which plain ``p_t`` would all but ignore.
"""

from __future__ import annotations

import torch

from hybridrft.objectives.base import MIXED, Objective, StepPlan, masked_token_mean, register_objective
from hybridrft.objectives.grpo import ROLLOUT, clipped_policy_terms, rollout_mask
from hybridrft.objectives.sft import DEMO, demo_mask
from hybridrft.ops import group_advantages, shaped_probability

GROUP = "group"  # every completion token of the batch, rollouts and demonstrations


@register_objective
class LUFFYObjective(Objective):
    name = "luffy"

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.luffy

    def plan(self, step: int) -> StepPlan:
        m = self.cfg.demos_per_group
        return StepPlan(MIXED, rollouts_per_prompt=self.cfg.num_generations - m, demos_per_prompt=m)

    def prepare(self, batch, plan):
        in_stats = ~batch.is_demo if self.cfg.advantage_stats == "rollouts" else None
        batch.advantage = group_advantages(batch.reward, batch.group, in_stats=in_stats, scale=self.cfg.advantage_scale)
        return {}

    def masks(self, batch, plan):
        return {GROUP: batch.loss_mask, ROLLOUT: rollout_mask(batch), DEMO: demo_mask(batch)}

    def loss(self, batch, out, totals, plan):
        on_policy, clipped = clipped_policy_terms(self.cfg, batch, out)
        off_policy = -batch.advantage.unsqueeze(-1) * shaped_probability(out.logp, self.cfg.policy_shaping_gamma)
        per_token = torch.where(batch.is_demo.unsqueeze(-1), off_policy, on_policy)
        masks = self.masks(batch, plan)
        loss = self.agg(per_token, masks[GROUP], totals[GROUP])
        # the two parts, each normalised like the joint loss so that they add up to it
        on = self.agg(on_policy, masks[ROLLOUT], totals[GROUP])
        metrics = {
            "loss/on_policy": on.detach(),
            "loss/off_policy": (loss - on).detach(),
            "grpo/clip_fraction": masked_token_mean(clipped.float(), masks[ROLLOUT], totals[ROLLOUT]),
        }
        return loss, metrics
