"""Two-stage SFT then GRPO: the sequential baseline that single-stage methods are compared with.

    steps 1 .. sft_steps:   L = L_SFT   (sft.py; group.demos_per_prompt demonstrations per prompt)
    steps sft_steps + 1 ..: L = L_GRPO  (grpo.py; group.num_generations rollouts, ``grpo`` section)

The papers ran this baseline as two runs: SFT at a high learning rate (LUFFY's README: 5e-5 with
OpenRLHF), then RL from the SFT checkpoint at the RL rate (1e-6), with a fresh optimizer. Here
``sft_learning_rate`` and ``rl_learning_rate`` set the two rates and ``reset_optimizer`` (default
on) clears AdamW's moments at the switch, so the RL phase starts as a new run would.

Logged every step: ``two_stage/phase_rl`` (0 during SFT, 1 during GRPO) and
``two_stage/switch_step``, so both phases and the switch are visible in the curves.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import RL, SFT, StepPlan, register_objective
from hybridrft.objectives.composite import PhaseLearningRates, SFTOrGRPOSteps


@dataclass
class TwoStageConfig(PhaseLearningRates):
    """SFT for ``sft_steps`` steps, then GRPO."""

    sft_steps: int = ranged(100, ">= 0")
    reset_optimizer: bool = True  # clear AdamW's moments when the RL phase starts


@register_objective
class TwoStageObjective(SFTOrGRPOSteps):
    name = "two_stage"
    config_section = TwoStageConfig

    def plan(self, step: int) -> StepPlan:
        cfg = self.config.two_stage
        info = {"two_stage/switch_step": float(cfg.sft_steps)}
        if step <= cfg.sft_steps:
            return self.step_plan(SFT, {**info, "two_stage/phase_rl": 0.0})
        switching = step == cfg.sft_steps + 1 and cfg.sft_steps > 0
        return self.step_plan(RL, {**info, "two_stage/phase_rl": 1.0}, reset_optimizer=switching and cfg.reset_optimizer)
