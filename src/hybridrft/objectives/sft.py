"""Supervised fine-tuning on demonstrations.

``L_SFT = agg_t(-log pi_theta(y*_t | x, y*_<t))`` over demonstration tokens: maximum likelihood
of the demonstrations, aggregated with the run's aggregation mode (DESIGN.md, "SFT").
``group.demos_per_prompt`` demonstrations per prompt; no rollouts.
"""

from __future__ import annotations

import torch

from hybridrft.objectives.base import (
    DEMO,
    SFT,
    BatchTotals,
    Objective,
    PolicyOutputs,
    StepPlan,
    register_objective,
)
from hybridrft.rollout import RolloutBatch


def sft_loss(
    objective: Objective,
    batch: RolloutBatch,
    out: PolicyOutputs,
    totals: BatchTotals,
    token_weights: torch.Tensor | None = None,
    mask_name: str = DEMO,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the demonstration tokens in ``batch.masks[mask_name]``; shared by
    every method with an SFT term. ``token_weights`` (detached, ``[B, T]``) reweight the tokens, as
    CHORD-phi does."""
    nll = -out.logp if token_weights is None else token_weights * -out.logp
    loss = objective.agg(nll, batch.masks[mask_name], totals[mask_name])
    return loss, {"loss/sft": loss.detach()}


@register_objective
class SFTObjective(Objective):
    """Plain SFT: every step trains on ``group.demos_per_prompt`` demonstrations per prompt."""

    name = "sft"
    has_rl_term = False

    def plan(self, step: int) -> StepPlan:
        return StepPlan(SFT, rollouts_per_prompt=0, demos_per_prompt=self.config.group.demos_per_prompt)

    def prepare(self, batch, plan):
        return {}  # the demonstration mask is one of the masks every batch carries

    def loss(self, batch, out, totals, plan):
        return sft_loss(self, batch, out, totals)
