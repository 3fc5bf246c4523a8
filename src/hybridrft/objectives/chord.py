"""CHORD: on-policy RL and off-policy SFT harmonised by a scheduled weight (Zhang et al. 2025,
arXiv 2508.11408). Reference: Trinity-RFT, ``trinity/algorithm/policy_loss_fn/chord_policy_loss.py``.

    L = (1 - mu_t) * L_GRPO + mu_t * L_SFT  [+ beta * KL - c_H * H, added unscaled in base.py]

``L_GRPO`` is grpo.py's clipped term on the rollouts, ``L_SFT`` sft.py's loss on the demonstrations,
each a token mean over its own tokens. ``mu_t`` (``ops.warmup_cosine``, Trinity-RFT's
``mu_schedule_function``) rises linearly from 0 (``mu_warmup_start``) to ``mu_peak`` over
``mu_warmup_steps``, decays along a cosine to ``mu_valley`` over ``mu_decay_steps`` and stays there:
the demonstrations dominate early and fade as the policy improves. As in Trinity-RFT's actor, the KL
and entropy terms are added after the mixed loss, not scaled by ``1 - mu``, and the entropy bonus
covers the rollouts only (its ``mix`` entropy loss skips expert rows).

With ``token_weighting`` (CHORD-phi; on by default, as in Trinity-RFT's CHORD example and its loss
class) each demonstration token's loss is weighted by
``sg(p_t (1 - p_t))``: tokens the policy already predicts (p near 1) and tokens it finds implausible
(p near 0) are down-weighted, which keeps SFT from disrupting the policy's entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import register_objective
from hybridrft.objectives.composite import GRPOWithSFT
from hybridrft.ops import uncertainty_weights, warmup_cosine


@dataclass
class CHORDConfig:
    """mu schedule and token weights; values of Trinity-RFT examples/mix_chord/mix_chord.yaml (math)."""

    mu_peak: float = ranged(0.5, "[0, 1]")
    mu_valley: float = ranged(0.02, "[0, 1]")
    mu_warmup_steps: int = ranged(200, ">= 0")  # linear rise from mu_warmup_start to mu_peak
    mu_decay_steps: int = ranged(400, ">= 0")  # cosine decay from peak to valley, then constant
    mu_warmup_start: float = ranged(0.0, "[0, 1]")  # Trinity-RFT rises from 0; set to mu_valley for a rise from the valley
    token_weighting: bool = True  # CHORD-phi: weight SFT tokens by sg(p (1 - p)); mix_chord.yaml and MIXCHORDPolicyLossFn: on


@register_objective
class CHORDObjective(GRPOWithSFT):
    name = "chord"
    config_section = CHORDConfig
    defaults = {
        "group.num_generations": 8,  # mix_chord.yaml: repeat_times 8
        "group.demos_per_prompt": 1,
        "grpo.entropy_tokens": "rollouts",  # Trinity-RFT MixEntropyLossFn: non-expert rows only (coef 0 by default)
        "grpo.dual_clip": 3.0,  # Trinity-RFT PPOPolicyLossFn (CHORD's GRPO term): clip_ratio_c 3.0
    }

    def mu(self, step: int) -> float:
        cfg = self.config.chord
        return warmup_cosine(
            step,
            peak=cfg.mu_peak,
            valley=cfg.mu_valley,
            warmup_steps=cfg.mu_warmup_steps,
            decay_steps=cfg.mu_decay_steps,
            warmup_start=cfg.mu_warmup_start,
        )

    def plan(self, step):
        return self.mixed_plan({"chord/mu": self.mu(step)})

    def loss(self, batch, out, totals, plan):
        mu = plan.info["chord/mu"]
        weights = uncertainty_weights(out.logp) if self.config.chord.token_weighting else None
        rl, sft, metrics = self.terms(batch, out, totals, sft_token_weights=weights)
        return (1.0 - mu) * rl + mu * sft, metrics
