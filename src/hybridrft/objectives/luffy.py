"""LUFFY: Learning to reason Under oFF-policY guidance (Yan et al. 2025, arXiv 2504.14945).
Reference: ElliottYan/LUFFY, ``luffy/verl/verl/mix_src/mix_core_alg.py``
(``compute_token_on_off_policy_loss``) and ``exp_scripts/train.sh``.

Each group holds ``group.num_generations`` rollouts of the current policy and
``group.demos_per_prompt`` off-policy demonstrations (7 + 1 by default, train.sh's ``rollout.n=8``
with ``n_prefix=1``). One group advantage is computed for all members, with the mean and std over
the whole mixed group (the paper's Mixed-Policy GRPO; train.sh's ``adv_estimator=grpo`` groups every
row by prompt), or over the rollouts only with ``group.advantage_stats=rollouts`` (the code's
``grpo_split``). Then, over all completion tokens of the batch together (one aggregation):

    rollout token:       -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)       (GRPO)
    demonstration token: -A * f(p_t),  f(p) = p / (p + gamma),  p_t = exp(logp_t)       (policy shaping)

Demonstrations are treated as sampled with behaviour probability 1, so their importance ratio is
``p_t`` itself, and they are not clipped. The shaping ``f`` (``gamma = 0.1``, train.sh's
``off_policy_reshape="p_div_p_0.1"``) raises the gradient on low-probability tokens, which plain
``p_t`` would all but ignore. ``grpo.clip=false`` drops the clip on rollout tokens too, as
train.sh does (``loss_remove_clip=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import (
    COMPLETIONS,
    MIXED,
    ROLLOUT,
    Objective,
    StepPlan,
    masked_token_mean,
    register_objective,
)
from hybridrft.objectives.grpo import clipped_policy_terms, group_advantage
from hybridrft.ops import shaped_probability


@dataclass
class LUFFYConfig:
    policy_shaping_gamma: float = ranged(0.1, "> 0")  # f(p) = p / (p + gamma) on demonstration tokens (train.sh p_div_p_0.1)


@register_objective
class LUFFYObjective(Objective):
    name = "luffy"
    config_section = LUFFYConfig
    defaults = {
        "group.num_generations": 7,  # train.sh: rollout.n=8 with n_prefix=1 -> 7 rollouts + 1 demonstration
        "group.demos_per_prompt": 1,
        "group.advantage_stats": "mixed",  # train.sh: adv_estimator=grpo over the whole group
        "grpo.entropy_coef": 0.001,  # train.sh: entropy_coeff=0.001 over every response token
    }

    def plan(self, step: int) -> StepPlan:
        group = self.config.group
        return StepPlan(MIXED, rollouts_per_prompt=group.num_generations, demos_per_prompt=group.demos_per_prompt)

    def prepare(self, batch, plan):
        batch.advantage = group_advantage(batch, self.config.group, demos_in_stats=True)
        return {}

    def loss(self, batch, out, totals, plan):
        cfg, advantage = self.config.luffy, batch.advantage.unsqueeze(-1)
        on_policy, clipped = clipped_policy_terms(self.config.grpo, batch, out)
        off_policy = -advantage * shaped_probability(out.logp, cfg.policy_shaping_gamma)
        per_token = torch.where(batch.is_demo.unsqueeze(-1), off_policy, on_policy)
        loss = self.policy_agg(per_token, batch.masks[COMPLETIONS], totals[COMPLETIONS])
        # the two parts, each normalised like the joint loss so that they add up to it
        on = self.policy_agg(on_policy, batch.masks[ROLLOUT], totals[COMPLETIONS])
        return loss, {
            "loss/on_policy": on.detach(),
            "loss/off_policy": (loss - on).detach(),
            "grpo/clip_fraction": masked_token_mean(clipped.float(), batch.masks[ROLLOUT], totals[ROLLOUT]),
        }
