"""CHORD: on-policy RL and off-policy SFT harmonised by a scheduled weight (Zhang et al. 2025,
arXiv 2508.11408).

    L = (1 - mu_t) * L_GRPO + mu_t * L_SFT

``L_GRPO`` is grpo.py's loss on the rollouts (``grpo`` section), ``L_SFT`` sft.py's loss on the
demonstrations. ``mu_t`` follows a warm-up-then-cosine-decay schedule: a linear rise from
``mu_valley`` to ``mu_peak`` over ``mu_warmup_steps``, then a cosine decay back to ``mu_valley``
over ``mu_decay_steps``: the demonstrations dominate early and fade as the policy improves.

With ``token_weighting`` (CHORD-phi) each demonstration token's loss is weighted by
``sg(p_t (1 - p_t))``: tokens the policy already predicts (p near 1) and tokens it finds implausible
(p near 0) are down-weighted, which keeps SFT from disrupting the policy's entropy.
"""

from __future__ import annotations

from hybridrft.objectives.base import MIXED, StepPlan, register_objective
from hybridrft.objectives.composite import GRPOWithSFT
from hybridrft.ops import uncertainty_weights, warmup_cosine


@register_objective
class CHORDObjective(GRPOWithSFT):
    name = "chord"

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.chord

    def mu(self, step: int) -> float:
        cfg = self.cfg
        return warmup_cosine(
            step, peak=cfg.mu_peak, valley=cfg.mu_valley, warmup_steps=cfg.mu_warmup_steps, decay_steps=cfg.mu_decay_steps
        )

    def plan(self, step: int) -> StepPlan:
        return StepPlan(
            MIXED, self.config.grpo.num_generations, self.cfg.demos_per_prompt, {"chord/mu": self.mu(step)}
        )

    def loss(self, batch, out, totals, plan):
        mu = plan.info["chord/mu"]
        weights = uncertainty_weights(out.logp) if self.cfg.token_weighting else None
        rl, sft, metrics = self.terms(batch, out, totals, sft_token_weights=weights)
        return (1.0 - mu) * rl + mu * sft, metrics
