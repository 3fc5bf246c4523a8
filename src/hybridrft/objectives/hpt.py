"""HPT: Hybrid Post-Training, a per-prompt switch between SFT and RL (Lv et al. 2025, arXiv 2509.04419).

Every prompt gets ``grpo.num_generations`` rollouts and a demonstration. After scoring, each prompt
is routed on its own:

    correct rollouts <= switch_gate  ->  SFT on its demonstration:  -logp_t on the demonstration tokens
    correct rollouts >  switch_gate  ->  GRPO on its rollouts:      the clipped surrogate of grpo.py

A prompt the policy cannot solve yet is taught from the demonstration; one it can solve is left to
RL. Both kinds of tokens are aggregated together (one ``loss.aggregation`` over the selected tokens),
and the share of prompts routed to SFT is logged every step as ``hpt/sft_prompt_share``.
Correct means reward >= ``reward.correct_threshold``.
"""

from __future__ import annotations

import torch

from hybridrft.objectives.base import MIXED, Objective, StepPlan, register_objective, sequence_mask
from hybridrft.objectives.grpo import clipped_policy_terms, grpo_advantages

SELECTED, SFT_TOKENS, RL_TOKENS = "selected", "sft_tokens", "rl_tokens"


def sft_prompts(reward: torch.Tensor, group: torch.Tensor, is_demo: torch.Tensor, *, gate: int, threshold: float) -> torch.Tensor:
    """Group ids whose number of correct rollouts is at most ``gate``."""
    groups = group.unique()
    correct = torch.stack([((group == g) & ~is_demo & (reward >= threshold)).sum() for g in groups])
    return groups[correct <= gate]


@register_objective
class HPTObjective(Objective):
    name = "hpt"

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.hpt
        self._sft_groups = torch.empty(0, dtype=torch.long)  # decided per step in prepare()

    def plan(self, step: int) -> StepPlan:
        return StepPlan(MIXED, self.config.grpo.num_generations, self.cfg.demos_per_prompt)

    def prepare(self, batch, plan):
        batch.advantage = grpo_advantages(batch, self.config.grpo)
        self._sft_groups = sft_prompts(
            batch.reward, batch.group, batch.is_demo, gate=self.cfg.switch_gate, threshold=self.config.reward.correct_threshold
        )
        return {"hpt/sft_prompt_share": len(self._sft_groups) / max(len(batch.group.unique()), 1)}

    def masks(self, batch, plan):
        in_sft_prompt = torch.isin(batch.group, self._sft_groups.to(batch.group.device))
        sft_tokens = sequence_mask(in_sft_prompt & batch.is_demo, batch.loss_mask)
        rl_tokens = sequence_mask(~in_sft_prompt & ~batch.is_demo, batch.loss_mask)
        return {SELECTED: sft_tokens | rl_tokens, SFT_TOKENS: sft_tokens, RL_TOKENS: rl_tokens}

    def loss(self, batch, out, totals, plan):
        masks = self.masks(batch, plan)
        policy, _ = clipped_policy_terms(self.config.grpo, batch, out)
        per_token = torch.where(masks[SFT_TOKENS], -out.logp, policy)
        loss = self.agg(per_token, masks[SELECTED], totals[SELECTED])
        sft = self.agg(-out.logp, masks[SFT_TOKENS], totals[SELECTED])  # its share of the joint loss
        return loss, {"loss/sft": sft.detach(), "loss/policy": (loss - sft).detach()}
