"""Static mix: GRPO plus a fixed-weight SFT loss on demonstrations ("RL with SFT loss" baseline).

    L = L_GRPO(rollouts) + mu * L_SFT(demonstrations)

with ``L_GRPO`` from grpo.py (``grpo`` section, advantages over rollouts only) and ``L_SFT`` from
sft.py, each aggregated over its own tokens. ``mu`` stays fixed for the whole run; CHORD (chord.py)
is the scheduled variant.
"""

from __future__ import annotations

from hybridrft.objectives.base import MIXED, Objective, StepPlan, register_objective
from hybridrft.objectives.grpo import ROLLOUT, grpo_advantages, grpo_loss, rollout_mask
from hybridrft.objectives.sft import DEMO, demo_mask, sft_loss


@register_objective
class StaticMixObjective(Objective):
    name = "static_mix"

    def __init__(self, config):
        super().__init__(config)
        self.mu = config.static_mix.mu

    def plan(self, step: int) -> StepPlan:
        return StepPlan(
            MIXED, self.config.grpo.num_generations, self.config.static_mix.demos_per_prompt, {"static_mix/mu": self.mu}
        )

    def prepare(self, batch, plan):
        batch.advantage = grpo_advantages(batch, self.config.grpo)
        return {}

    def masks(self, batch, plan):
        return {ROLLOUT: rollout_mask(batch), DEMO: demo_mask(batch)}

    @property
    def needs_reference(self) -> bool:
        return self.config.grpo.beta > 0

    def loss(self, batch, out, totals, plan):
        rl, metrics = grpo_loss(self, self.config.grpo, batch, out, totals)
        sft, sft_metrics = sft_loss(self, batch, out, totals)
        return rl + self.mu * sft, {**metrics, **sft_metrics}
