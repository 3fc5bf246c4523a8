"""HPT: Hybrid Post-Training, a per-prompt switch between SFT and RL (Lv et al. 2025, arXiv 2509.04419).
Reference: TsinghuaC3I/Unify-Post-Training, ``hpt/verl/verl/mix_src/mix_trainer.py``
(``select_on_off_ada_balance``) and ``mix_actor.py`` (``offline_loss_type == "sft"``).

Every prompt gets ``group.num_generations`` rollouts and ``group.demos_per_prompt`` demonstrations.
After scoring, each prompt is routed on its own:

    correct rollouts <= switch_gate  ->  SFT on its demonstration (its rollouts are dropped)
    correct rollouts >  switch_gate  ->  GRPO on its rollouts (its demonstration is dropped)

    L = L_GRPO + sft_coef * L_SFT

Each term is normalised over its own tokens (the reference adds ``sft_loss * sft_loss_coef`` to the
policy-gradient loss, the SFT loss a token mean over demonstration tokens), so a single SFT prompt in
a step weighs as much as the whole SFT term and not its share of the step's tokens. The entropy
bonus and the KL penalty (base.py) cover the trained tokens of both kinds, as the reference's
``response_mask`` does once the dropped rows are gone. Correct means reward >=
``reward.correct_threshold``. A prompt the policy cannot solve yet is taught from the demonstration;
one it can solve is left to RL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import TRAINED, StepPlan, register_objective, sequence_mask
from hybridrft.objectives.composite import GRPOWithSFT
from hybridrft.objectives.grpo import grpo_loss
from hybridrft.objectives.sft import sft_loss

SFT_TOKENS, RL_TOKENS = "sft_tokens", "rl_tokens"


@dataclass
class HPTConfig:
    switch_gate: int = ranged(0, ">= 0")  # Unify-Post-Training exp_scripts/train.sh SWITCH_GATE=0 (Qwen); 2 in train_llama.sh
    sft_coef: float = ranged(1.0, ">= 0")  # mix_ppo_trainer.yaml sft_loss_coef (train.sh: 1.0; "0.3 for Qwen2.5-Math-1.5B")


def sft_prompts(reward: torch.Tensor, group: torch.Tensor, is_demo: torch.Tensor, *, gate: int, threshold: float) -> torch.Tensor:
    """``[N]`` bool: rows of the prompts whose number of correct rollouts is at most ``gate``."""
    correct_rollout = (~is_demo & (reward >= threshold)).long()
    correct_per_group = torch.zeros(int(group.max()) + 1, dtype=torch.long).index_add_(0, group.cpu(), correct_rollout.cpu())
    return (correct_per_group <= gate)[group.cpu()].to(group.device)


@register_objective
class HPTObjective(GRPOWithSFT):
    name = "hpt"
    config_section = HPTConfig
    defaults = {
        "group.num_generations": 8,  # train.sh: rollout.n=8, n_verify=8
        "group.demos_per_prompt": 1,  # one demonstration for a switched prompt
        "grpo.entropy_coef": 0.001,  # train.sh: entropy_coeff=0.001, over every response token
    }

    def plan(self, step: int) -> StepPlan:
        return self.mixed_plan({})

    def prepare(self, batch, plan):
        super().prepare(batch, plan)  # group advantages over the rollouts
        to_sft = sft_prompts(
            batch.reward, batch.group, batch.is_demo,
            gate=self.config.hpt.switch_gate, threshold=self.config.reward.correct_threshold,
        )
        batch.masks[SFT_TOKENS] = sequence_mask(to_sft & batch.is_demo, batch.loss_mask)
        batch.masks[RL_TOKENS] = sequence_mask(~to_sft & ~batch.is_demo, batch.loss_mask)
        batch.masks[TRAINED] = batch.masks[SFT_TOKENS] | batch.masks[RL_TOKENS]
        groups = batch.group.unique()
        switched = sum(bool(to_sft[batch.group == g].any()) for g in groups)
        return {"hpt/sft_prompt_share": switched / max(len(groups), 1)}

    def loss(self, batch, out, totals, plan):
        policy, metrics = grpo_loss(self, batch, out, totals, mask_name=RL_TOKENS)
        sft, sft_metrics = sft_loss(self, batch, out, totals, mask_name=SFT_TOKENS)
        return policy + self.config.hpt.sft_coef * sft, {**metrics, **sft_metrics}
