"""Building blocks for methods made of the SFT loss (sft.py) and the GRPO loss (grpo.py).

- ``SFTOrGRPOSteps``: every step is wholly SFT or wholly GRPO; subclasses decide which in ``plan``
  (two_stage.py by step count, sasr.py by a random draw).
- ``GRPOWithSFT``: every step trains GRPO on the rollouts and SFT on the demonstrations; subclasses
  decide how the two terms combine in ``loss`` (static_mix.py: fixed weight, chord.py: schedule).
"""

from __future__ import annotations

import torch

from hybridrft.objectives.base import SFT, BatchTotals, Objective, PolicyOutputs
from hybridrft.objectives.grpo import ROLLOUT, grpo_advantages, grpo_loss, rollout_mask
from hybridrft.objectives.sft import DEMO, demo_mask, sft_loss
from hybridrft.rollout import RolloutBatch


class _UsesGRPOSection(Objective):
    @property
    def needs_reference(self) -> bool:
        return self.config.grpo.beta > 0


class SFTOrGRPOSteps(_UsesGRPOSection):
    """SFT steps use the ``sft`` section, RL steps the ``grpo`` section."""

    def prepare(self, batch, plan):
        if plan.kind != SFT:
            batch.advantage = grpo_advantages(batch, self.config.grpo)
        return {}

    def masks(self, batch, plan):
        return {DEMO: demo_mask(batch)} if plan.kind == SFT else {ROLLOUT: rollout_mask(batch)}

    def loss(self, batch, out, totals, plan):
        if plan.kind == SFT:
            return sft_loss(self, batch, out, totals)
        return grpo_loss(self, self.config.grpo, batch, out, totals)


class GRPOWithSFT(_UsesGRPOSection):
    """GRPO (advantages over the rollouts) plus SFT on the demonstrations, every step."""

    def prepare(self, batch, plan):
        batch.advantage = grpo_advantages(batch, self.config.grpo)
        return {}

    def masks(self, batch, plan):
        return {ROLLOUT: rollout_mask(batch), DEMO: demo_mask(batch)}

    def terms(
        self,
        batch: RolloutBatch,
        out: PolicyOutputs,
        totals: BatchTotals,
        sft_token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(L_GRPO, L_SFT, metrics)`` of a micro-batch, each over its own tokens."""
        rl, metrics = grpo_loss(self, self.config.grpo, batch, out, totals)
        sft, sft_metrics = sft_loss(self, batch, out, totals, token_weights=sft_token_weights)
        return rl, sft, {**metrics, **sft_metrics}
