"""Static mix: GRPO plus a fixed-weight SFT loss on demonstrations ("RL with SFT loss" baseline).

    L = L_GRPO(rollouts) + mu * L_SFT(demonstrations)

with ``L_GRPO`` from grpo.py (advantages over the rollouts only) and ``L_SFT`` from sft.py, each
aggregated over its own tokens. ``mu`` stays fixed for the whole run; CHORD (chord.py) is the
scheduled variant. The reference is LUFFY's "RL w/ SFT loss" baseline
(ElliottYan/LUFFY ``exp_scripts/train_rl_sft_loss.sh``): 7 rollouts and 1 demonstration per prompt,
rollouts-only group statistics (``grpo_split``), ``sft_loss_coef = 1.0`` on the demonstrations' token
mean, entropy bonus 0.001.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import register_objective
from hybridrft.objectives.composite import GRPOWithSFT


@dataclass
class StaticMixConfig:
    """L = L_GRPO + mu * L_SFT, fixed mu."""

    mu: float = ranged(1.0, ">= 0")  # LUFFY mix_ppo_trainer.yaml sft_loss_coef, used by train_rl_sft_loss.sh


@register_objective
class StaticMixObjective(GRPOWithSFT):
    name = "static_mix"
    config_section = StaticMixConfig
    defaults = {
        "group.num_generations": 7,  # LUFFY train_rl_sft_loss.sh: rollout.n=8 with n_prefix=1
        "group.demos_per_prompt": 1,
        "grpo.entropy_coef": 0.001,  # LUFFY train_rl_sft_loss.sh: entropy_coeff=0.001
    }

    def plan(self, step):
        return self.mixed_plan({"static_mix/mu": self.config.static_mix.mu})

    def loss(self, batch, out, totals, plan):
        rl, sft, metrics = self.terms(batch, out, totals)
        return rl + self.config.static_mix.mu * sft, metrics
