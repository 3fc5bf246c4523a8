"""GRPO: Group Relative Policy Optimisation (Shao et al. 2024, arXiv 2402.03300, Eq. 3),
with the DAPO (arXiv 2503.14476) and Dr. GRPO (arXiv 2503.20783) options.

For prompt ``x`` and rollouts ``y_1..y_n ~ pi_theta`` (``group.num_generations``):

    A_k   = (r_k - mean(r)) / (std(r) + eps)                  (group advantage; group.advantage_scale)
    rho_t = exp(clamp(logp_t - old_logp_t, -20, 20))          (old = detached current with one update per batch)
    L     = agg(-min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A))   [bounded by -c A for A < 0: grpo.dual_clip]
            + beta * agg(k3_t) - c_H * token_mean(H_t)        (added for every RL method in base.py)
    k3_t  = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (clamped as verl's low_var_kl)

``beta = 0`` by default, in which case no reference model is loaded. With ``train.updates_per_batch``
or ``train.epochs_per_batch`` above 1, ``old_logp`` is measured once before the first update.
"""

from __future__ import annotations

import torch

from hybridrft.config import GroupConfig
from hybridrft.objectives.base import (
    RL,
    ROLLOUT,
    SAMPLED,
    BatchTotals,
    Objective,
    PolicyOutputs,
    StepPlan,
    behaviour_logp,
    masked_token_mean,
    register_objective,
)
from hybridrft.ops import clipped_surrogate, group_advantages, policy_ratio, rollout_importance_weights
from hybridrft.rollout import RolloutBatch


def group_advantage(batch: RolloutBatch, group: GroupConfig, *, demos_in_stats: bool = False) -> torch.Tensor:
    """Group advantages of every row; demonstrations enter the statistics only if ``demos_in_stats``
    (the mixed group of SRFT and LUFFY) and ``group.advantage_stats`` is ``mixed``."""
    mixed = demos_in_stats and group.advantage_stats == "mixed"
    return group_advantages(
        batch.reward,
        batch.group,
        in_stats=None if mixed else ~batch.is_demo,
        scale=group.advantage_scale,
        eps=group.advantage_eps,
    )


def rollout_correction(cfg, batch: RolloutBatch, out: PolicyOutputs) -> torch.Tensor | None:
    """The truncated importance weights ``[B, T]`` of the rollout tokens' policy-gradient terms
    (``grpo.rollout_is``; ops/rollout_correction.py), or None when the correction is off.
    ``pi_old`` is the stored behaviour log-prob, or the detached current one when each batch is used once."""
    if cfg.rollout_is == "none":
        return None
    if batch.sampler_logp is None:
        raise ValueError(
            f"grpo.rollout_is={cfg.rollout_is} needs the sampler's log-probs of the rollout tokens; the "
            "native and vllm samplers record them when sampling (rollout.temperature > 0), the hf sampler does not"
        )
    return rollout_importance_weights(
        behaviour_logp(batch, out), batch.sampler_logp, batch.masks[SAMPLED], mode=cfg.rollout_is, cap=cfg.rollout_is_cap
    )


def clipped_policy_terms(cfg, batch: RolloutBatch, out: PolicyOutputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token GRPO clipped surrogate ``[B, T]`` and the clipped-branch flags, for any rows.

    The log-ratio is clamped to ``[-grpo.log_ratio_bound, bound]`` (verl; 20 by default) and, with
    ``grpo.dual_clip``, a negative-advantage token's loss is bounded by ``-dual_clip * A`` (verl's
    ``clip_ratio_c``). With ``grpo.clip = false`` the plain importance-weighted term ``-rho_t A`` (no
    token clipped, no dual clip), as the released LUFFY, SRFT and HPT scripts run it
    (``loss_remove_clip=True``). With ``grpo.rollout_is`` each rollout token's term is multiplied by
    its truncated importance weight ``pi_old / pi_sampler`` (as TRL multiplies its per-token loss;
    demonstration rows keep weight 1)."""
    old_logp = behaviour_logp(batch, out)
    if not cfg.clip:
        ratio = policy_ratio(out.logp, old_logp, log_ratio_bound=cfg.log_ratio_bound)
        per_token, clipped = -ratio * batch.advantage.unsqueeze(-1), torch.zeros_like(out.logp, dtype=torch.bool)
    else:
        per_token, clipped = clipped_surrogate(
            out.logp, old_logp, batch.advantage.unsqueeze(-1), eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip, log_ratio_bound=cfg.log_ratio_bound,
        )
    weights = rollout_correction(cfg, batch, out)
    return (per_token if weights is None else per_token * weights), clipped


def grpo_loss(
    objective: Objective,
    batch: RolloutBatch,
    out: PolicyOutputs,
    totals: BatchTotals,
    mask_name: str = ROLLOUT,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy-gradient term over ``batch.masks[mask_name]`` (default: every rollout
    token); shared by every method with a GRPO term. Its settings are the ``grpo`` section."""
    mask = batch.masks[mask_name]
    per_token, clipped = clipped_policy_terms(objective.config.grpo, batch, out)
    policy = objective.policy_agg(per_token, mask, totals[mask_name])
    return policy, {
        "loss/policy": policy.detach(),
        "grpo/clip_fraction": masked_token_mean(clipped.float(), mask, totals[mask_name]),
    }


@register_objective
class GRPOObjective(Objective):
    """Pure RL: ``group.num_generations`` rollouts per prompt, no demonstrations."""

    name = "grpo"
    trains_on_demonstrations = False
    defaults = {"grpo.dual_clip": 3.0}  # verl compute_policy_loss_vanilla: clip_ratio_c 3.0 (the GRPO term's source)

    def plan(self, step: int) -> StepPlan:
        return StepPlan(RL, rollouts_per_prompt=self.config.group.num_generations, demos_per_prompt=0)

    def prepare(self, batch, plan):
        batch.advantage = group_advantage(batch, self.config.group)
        return {}

    def loss(self, batch, out, totals, plan):
        return grpo_loss(self, batch, out, totals)
