"""Two-stage SFT then GRPO: the sequential baseline that single-stage methods are compared with.

    steps 1 .. sft_steps:   L = L_SFT   (``sft`` section; sft.py)
    steps sft_steps + 1 ..: L = L_GRPO  (``grpo`` section; grpo.py)

Logged every step: ``two_stage/phase_rl`` (0 during SFT, 1 during GRPO) and
``two_stage/switch_step``, so both phases and the switch are visible in the curves.
"""

from __future__ import annotations

from hybridrft.objectives.base import RL, SFT, Objective, StepPlan, register_objective
from hybridrft.objectives.grpo import ROLLOUT, grpo_advantages, grpo_loss, rollout_mask
from hybridrft.objectives.sft import DEMO, demo_mask, sft_loss


@register_objective
class TwoStageObjective(Objective):
    name = "two_stage"

    def __init__(self, config):
        super().__init__(config)
        self.switch_step = config.two_stage.sft_steps

    def plan(self, step: int) -> StepPlan:
        info = {"two_stage/switch_step": float(self.switch_step)}
        if step <= self.switch_step:
            return StepPlan(SFT, 0, self.config.sft.demos_per_prompt, {**info, "two_stage/phase_rl": 0.0})
        return StepPlan(RL, self.config.grpo.num_generations, 0, {**info, "two_stage/phase_rl": 1.0})

    def prepare(self, batch, plan):
        if plan.kind == RL:
            batch.advantage = grpo_advantages(batch, self.config.grpo)
        return {}

    def masks(self, batch, plan):
        return {DEMO: demo_mask(batch)} if plan.kind == SFT else {ROLLOUT: rollout_mask(batch)}

    @property
    def needs_reference(self) -> bool:
        return self.config.grpo.beta > 0

    def loss(self, batch, out, totals, plan):
        if plan.kind == SFT:
            return sft_loss(self, batch, out, totals)
        return grpo_loss(self, self.config.grpo, batch, out, totals)
