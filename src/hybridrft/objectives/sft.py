"""Supervised fine-tuning on demonstrations.

``L_SFT = agg_t(-log pi_theta(y*_t | x, y*_<t))`` over demonstration tokens: maximum likelihood
of the demonstrations, aggregated with the run's aggregation mode (DESIGN.md, "SFT").
"""

from __future__ import annotations

import torch

from hybridrft.objectives.base import (
    SFT,
    BatchTotals,
    Objective,
    PolicyOutputs,
    StepPlan,
    register_objective,
    sequence_mask,
)
from hybridrft.rollout import RolloutBatch

DEMO = "demo"


def demo_mask(batch: RolloutBatch) -> torch.Tensor:
    return sequence_mask(batch.is_demo, batch.loss_mask)


def sft_loss(
    objective: Objective,
    batch: RolloutBatch,
    out: PolicyOutputs,
    totals: BatchTotals,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the demonstration tokens; shared by every method with an SFT step.

    ``token_weights`` (detached, ``[B, T]``) reweight the tokens, as CHORD-phi does.
    """
    nll = -out.logp if token_weights is None else token_weights * -out.logp
    loss = objective.agg(nll, demo_mask(batch), totals[DEMO])
    return loss, {"loss/sft": loss.detach()}


@register_objective
class SFTObjective(Objective):
    """Plain SFT: every step trains on ``sft.demos_per_prompt`` demonstrations per prompt, no rollouts."""

    name = "sft"

    def plan(self, step: int) -> StepPlan:
        return StepPlan(SFT, rollouts_per_prompt=0, demos_per_prompt=self.config.sft.demos_per_prompt)

    def masks(self, batch, plan):
        return {DEMO: demo_mask(batch)}

    def loss(self, batch, out, totals, plan):
        return sft_loss(self, batch, out, totals)
