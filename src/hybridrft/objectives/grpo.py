"""GRPO: Group Relative Policy Optimisation (Shao et al. 2024, arXiv 2402.03300, Eq. 3),
with the DAPO (arXiv 2503.14476) and Dr. GRPO (arXiv 2503.20783) options.

For prompt ``x`` and rollouts ``y_1..y_n ~ pi_theta``:

    A_k   = (r_k - mean(r)) / (std(r) + 1e-6)                 (group advantage; scale option)
    rho_t = exp(logp_t - old_logp_t)                          (old = detached current: one update per batch)
    L     = agg(-min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A))
            + beta * agg(k3_t) - c_H * agg(H_t)
    k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1

``beta = 0`` by default, in which case no reference model is loaded.
"""

from __future__ import annotations

import torch

from hybridrft.config import GRPOConfig
from hybridrft.objectives.base import (
    RL,
    BatchTotals,
    Objective,
    PolicyOutputs,
    StepPlan,
    masked_token_mean,
    register_objective,
    sequence_mask,
)
from hybridrft.ops import clipped_surrogate, group_advantages, k3_kl
from hybridrft.rollout import RolloutBatch

ROLLOUT = "rollout"


def rollout_mask(batch: RolloutBatch) -> torch.Tensor:
    return sequence_mask(~batch.is_demo, batch.loss_mask)


def grpo_advantages(batch: RolloutBatch, cfg: GRPOConfig) -> torch.Tensor:
    """Group advantages with statistics over the rollouts (a GRPO group holds no demonstrations)."""
    return group_advantages(batch.reward, batch.group, in_stats=~batch.is_demo, scale=cfg.advantage_scale)


def clipped_policy_terms(cfg, batch: RolloutBatch, out: PolicyOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token GRPO clipped surrogate ``[B, T]`` and the clipped-branch flags, for any rows."""
    old_logp = batch.old_logp if batch.old_logp is not None else out.logp.detach()
    return clipped_surrogate(
        out.logp, old_logp, batch.advantage.unsqueeze(-1), eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high
    )


def grpo_loss(
    objective: Objective,
    cfg: GRPOConfig,
    batch: RolloutBatch,
    out: PolicyOutputs,
    totals: BatchTotals,
    mask: torch.Tensor | None = None,
    mask_name: str = ROLLOUT,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of a micro-batch of rollouts; shared by every method with a GRPO step.

    ``mask`` (default: every rollout token) and its full-batch ``totals[mask_name]`` select the
    tokens, so a method can apply GRPO to some prompts only.
    """
    mask = rollout_mask(batch) if mask is None else mask
    per_token, clipped = clipped_policy_terms(cfg, batch, out)
    policy = objective.agg(per_token, mask, totals[mask_name])
    loss = policy
    metrics = {
        "loss/policy": policy.detach(),
        "grpo/clip_fraction": masked_token_mean(clipped.float(), mask, totals[mask_name]),
    }
    if cfg.beta > 0:
        if batch.ref_logp is None:
            raise ValueError("grpo.beta > 0 needs reference log-probs (the trainer loads a reference model)")
        kl = objective.agg(k3_kl(out.logp, batch.ref_logp), mask, totals[mask_name])
        loss = loss + cfg.beta * kl
        metrics["loss/kl"] = kl.detach()
    if cfg.entropy_coef:
        bonus = -cfg.entropy_coef * objective.agg(out.entropy, mask, totals[mask_name])
        loss = loss + bonus
        metrics["loss/entropy_bonus"] = bonus.detach()
    return loss, metrics


@register_objective
class GRPOObjective(Objective):
    """Pure RL: ``grpo.num_generations`` rollouts per prompt, no demonstrations."""

    name = "grpo"

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.grpo

    def plan(self, step: int) -> StepPlan:
        return StepPlan(RL, rollouts_per_prompt=self.cfg.num_generations, demos_per_prompt=0)

    def prepare(self, batch, plan):
        batch.advantage = grpo_advantages(batch, self.cfg)
        return {}

    def masks(self, batch, plan):
        return {ROLLOUT: rollout_mask(batch)}

    @property
    def needs_reference(self) -> bool:
        return self.cfg.beta > 0

    def loss(self, batch, out, totals, plan):
        return grpo_loss(self, self.cfg, batch, out, totals)
