"""Static mix: GRPO plus a fixed-weight SFT loss on demonstrations ("RL with SFT loss" baseline).

    L = L_GRPO(rollouts) + mu * L_SFT(demonstrations)

with ``L_GRPO`` from grpo.py (``grpo`` section, advantages over rollouts only) and ``L_SFT`` from
sft.py, each aggregated over its own tokens. ``mu`` stays fixed for the whole run; CHORD (chord.py)
is the scheduled variant.
"""

from __future__ import annotations

from hybridrft.objectives.base import MIXED, StepPlan, register_objective
from hybridrft.objectives.composite import GRPOWithSFT


@register_objective
class StaticMixObjective(GRPOWithSFT):
    name = "static_mix"

    def __init__(self, config):
        super().__init__(config)
        self.mu = config.static_mix.mu

    def plan(self, step: int) -> StepPlan:
        return StepPlan(
            MIXED, self.config.grpo.num_generations, self.config.static_mix.demos_per_prompt, {"static_mix/mu": self.mu}
        )

    def loss(self, batch, out, totals, plan):
        rl, sft, metrics = self.terms(batch, out, totals)
        return rl + self.mu * sft, metrics
