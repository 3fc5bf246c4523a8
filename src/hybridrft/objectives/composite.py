"""Building blocks for methods made of the SFT loss (sft.py) and the GRPO loss (grpo.py).

- ``SFTOrGRPOSteps``: every step is wholly SFT or wholly GRPO; subclasses decide which in ``plan``
  (two_stage.py by step count, sasr.py by a random draw). Each kind of step can have its own
  learning rate (``PhaseLearningRates``), as the papers' SFT-then-RL baselines ran SFT at a much
  higher learning rate than RL.
- ``GRPOWithSFT``: every step trains GRPO on the rollouts and SFT on the demonstrations; subclasses
  decide how the two terms combine in ``loss`` (static_mix.py: fixed weight, chord.py: schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import MIXED, RL, SFT, BatchTotals, Objective, PolicyOutputs, StepPlan
from hybridrft.objectives.grpo import group_advantage, grpo_loss
from hybridrft.objectives.sft import sft_loss
from hybridrft.rollout import RolloutBatch


@dataclass
class PhaseLearningRates:
    sft_learning_rate: Optional[float] = ranged(None, "> 0")  # base learning rate of SFT steps (default: train.learning_rate)
    rl_learning_rate: Optional[float] = ranged(None, "> 0")  # base learning rate of RL steps (default: train.learning_rate)


class SFTOrGRPOSteps(Objective):
    """SFT steps train on ``group.demos_per_prompt`` demonstrations, RL steps on ``group.num_generations``
    rollouts with the ``grpo`` section; the method's section holds ``PhaseLearningRates``."""

    def step_plan(self, kind: str, info: dict[str, float], *, reset_optimizer: bool = False) -> StepPlan:
        section, group = self.config.section(self.name), self.config.group
        if kind == SFT:
            return StepPlan(SFT, 0, group.demos_per_prompt, info, section.sft_learning_rate, reset_optimizer)
        return StepPlan(RL, group.num_generations, 0, info, section.rl_learning_rate, reset_optimizer)

    def prepare(self, batch, plan):
        if plan.kind != SFT:
            batch.advantage = group_advantage(batch, self.config.group)
        return {}

    def loss(self, batch, out, totals, plan):
        if plan.kind == SFT:
            return sft_loss(self, batch, out, totals)
        return grpo_loss(self, batch, out, totals)


class GRPOWithSFT(Objective):
    """GRPO (advantages over the rollouts) plus SFT on the demonstrations, every step."""

    def mixed_plan(self, info: dict[str, float]) -> StepPlan:
        group = self.config.group
        return StepPlan(MIXED, group.num_generations, group.demos_per_prompt, info)

    def prepare(self, batch, plan):
        batch.advantage = group_advantage(batch, self.config.group)
        return {}

    def terms(
        self,
        batch: RolloutBatch,
        out: PolicyOutputs,
        totals: BatchTotals,
        sft_token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(L_GRPO, L_SFT, metrics)`` of a micro-batch, each over its own tokens."""
        rl, metrics = grpo_loss(self, batch, out, totals)
        sft, sft_metrics = sft_loss(self, batch, out, totals, token_weights=sft_token_weights)
        return rl, sft, {**metrics, **sft_metrics}
