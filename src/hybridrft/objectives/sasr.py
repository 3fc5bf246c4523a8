"""SASR: Step-wise Adaptive SFT/RL integration (Chen et al. 2025, arXiv 2505.13026, Algorithm 1).

1. Warm-up: ``warmup_steps`` pure SFT steps. On the last one record ``G_warmup``, the L2 norm of the
   SFT gradient before clipping.
2. After warm-up, each step ``t``:

       p_t = G_sft / (G_sft + gamma * G_warmup)

   with ``G_sft`` the pre-clip gradient norm of the most recent SFT step. Draw ``u ~ U(0, 1)`` from the
   objective's own seeded generator; take an SFT step if ``u < p_t``, else a GRPO step. Only SFT steps
   update ``G_sft``. A large SFT gradient (the policy is far from the demonstrations) makes SFT more
   likely; as SFT converges its gradient shrinks and RL takes over.

SFT steps train on ``group.demos_per_prompt`` demonstrations with the loss of ``sft.py``; GRPO steps on
``group.num_generations`` rollouts with the loss of ``grpo.py`` (``grpo`` section). Each kind can have
its own learning rate (``sft_learning_rate``, ``rl_learning_rate``). ``G_warmup``, ``G_sft``, the
generator state and the choice history are checkpointed, so a resumed run makes the same choices.

A step is one generation batch: the choice is drawn once per step, and when a step makes several
optimizer updates (``train.updates_per_batch``, ``train.epochs_per_batch``) its gradient norm is
the mean of the updates' pre-clip norms.

No public code of SASR was found; this follows the paper's Algorithm 1 as DESIGN.md gives it.

The paper also mentions the divergence from the initial distribution; its exact formula is not
public. The choice rule is therefore a registered function of the objective's state: a variant
(for instance one that uses the KL to the initial policy) is a new function and
``sasr.choice_rule=<name>``, not a fork.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import RL, SFT, StepPlan, register_objective
from hybridrft.objectives.composite import PhaseLearningRates, SFTOrGRPOSteps


@dataclass
class SASRConfig(PhaseLearningRates):
    """SASR (Chen et al. 2025, arXiv 2505.13026), Algorithm 1."""

    warmup_steps: int = ranged(10, ">= 1")  # pure SFT steps before switching starts (G_warmup: the last one's)
    gamma: float = ranged(1.0, "> 0")  # p_t = G_sft / (G_sft + gamma * G_warmup)
    choice_rule: str = "grad_norm"  # name of a registered rule (hybridrft.objectives.sasr.CHOICE_RULES)


@dataclass
class SASRState:
    g_warmup: float | None = None
    g_sft: float | None = None
    choices: list[str] = field(default_factory=list)  # "sft" / "rl" per step, in order


def sft_probability(g_sft: float, g_warmup: float, gamma: float) -> float:
    """``p_t = G_sft / (G_sft + gamma * G_warmup)``; 1 when both norms are 0 (nothing to compare)."""
    denominator = g_sft + gamma * g_warmup
    return 1.0 if denominator <= 0 else g_sft / denominator


ChoiceRule = Callable[[SASRState, SASRConfig], float]
CHOICE_RULES: dict[str, ChoiceRule] = {}


def register_choice_rule(name: str) -> Callable[[ChoiceRule], ChoiceRule]:
    def register(rule: ChoiceRule) -> ChoiceRule:
        CHOICE_RULES[name] = rule
        return rule

    return register


@register_choice_rule("grad_norm")
def grad_norm_rule(state: SASRState, cfg: SASRConfig) -> float:
    """The paper's rule: probability of SFT from the latest SFT gradient norm vs. the warm-up norm."""
    return sft_probability(state.g_sft, state.g_warmup, cfg.gamma)


@register_objective
class SASRObjective(SFTOrGRPOSteps):
    name = "sasr"
    config_section = SASRConfig
    defaults = {"grpo.dual_clip": 3.0}  # its RL steps are GRPO's (no public SASR code): verl's clip_ratio_c
    summary_keys = (("sasr/p_t", "p_t"),)

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.sasr
        if self.cfg.choice_rule not in CHOICE_RULES:
            raise ValueError(f"unknown sasr.choice_rule '{self.cfg.choice_rule}' (known: {', '.join(CHOICE_RULES)})")
        self.rule = CHOICE_RULES[self.cfg.choice_rule]
        self.state = SASRState()
        self.generator = torch.Generator().manual_seed(config.train.seed)

    def plan(self, step: int) -> StepPlan:
        """Steps are numbered from 1; steps ``1..warmup_steps`` are the SFT warm-up."""
        if step <= self.cfg.warmup_steps:
            kind, info = SFT, {"sasr/p_t": 1.0, "sasr/warmup": 1.0}
        else:
            p_t = self.rule(self.state, self.cfg)
            u = float(torch.rand((), generator=self.generator))
            kind = SFT if u < p_t else RL
            info = {"sasr/p_t": p_t, "sasr/u": u, "sasr/warmup": 0.0}
        info["sasr/choice_sft"] = 1.0 if kind == SFT else 0.0
        self.state.choices.append(kind)
        return self.step_plan(kind, info)

    def after_step(self, step: int, plan: StepPlan, grad_norm: float) -> dict[str, float]:
        if plan.kind == SFT:
            self.state.g_sft = grad_norm
            if step == self.cfg.warmup_steps:
                self.state.g_warmup = grad_norm
        metrics = {}
        if self.state.g_sft is not None:
            metrics["sasr/g_sft"] = self.state.g_sft
        if self.state.g_warmup is not None:
            metrics["sasr/g_warmup"] = self.state.g_warmup
        return metrics

    def state_dict(self):
        return {
            "g_warmup": self.state.g_warmup,
            "g_sft": self.state.g_sft,
            "choices": list(self.state.choices),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state):
        self.state = SASRState(state["g_warmup"], state["g_sft"], list(state["choices"]))
        self.generator.set_state(state["generator"])
