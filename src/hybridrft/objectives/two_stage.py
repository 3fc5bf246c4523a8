"""Two-stage SFT then GRPO: the sequential baseline that single-stage methods are compared with.

    steps 1 .. sft_steps:   L = L_SFT   (``sft`` section; sft.py)
    steps sft_steps + 1 ..: L = L_GRPO  (``grpo`` section; grpo.py)

Logged every step: ``two_stage/phase_rl`` (0 during SFT, 1 during GRPO) and
``two_stage/switch_step``, so both phases and the switch are visible in the curves.
"""

from __future__ import annotations

from hybridrft.objectives.base import RL, SFT, StepPlan, register_objective
from hybridrft.objectives.composite import SFTOrGRPOSteps


@register_objective
class TwoStageObjective(SFTOrGRPOSteps):
    name = "two_stage"

    def __init__(self, config):
        super().__init__(config)
        self.switch_step = config.two_stage.sft_steps

    def plan(self, step: int) -> StepPlan:
        info = {"two_stage/switch_step": float(self.switch_step)}
        if step <= self.switch_step:
            return StepPlan(SFT, 0, self.config.sft.demos_per_prompt, {**info, "two_stage/phase_rl": 0.0})
        return StepPlan(RL, self.config.grpo.num_generations, 0, {**info, "two_stage/phase_rl": 1.0})
