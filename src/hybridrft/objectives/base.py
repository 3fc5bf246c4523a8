"""The objective interface the trainer drives, and the registry of objectives by name.

A step, seen from an objective:

1. ``plan(step)`` says what the step needs: rollouts per prompt, demonstrations per prompt, and the
   kind of update (SASR decides SFT or RL here).
2. The trainer samples, scores and builds a ``RolloutBatch``; ``prepare(batch, plan)`` sets the
   advantages (and returns any step-level metrics of its decisions).
3. ``masks(batch, plan)`` names the token sets its loss terms aggregate over. The trainer measures
   each over the whole batch (``BatchTotals``) so a micro-batch's loss is already normalised by the
   full batch: summing micro-batch losses gives the full-batch loss exactly.
4. ``loss(micro_batch, outputs, totals, plan)`` returns the scalar loss of that micro-batch and named
   metrics, each a contribution that sums over micro-batches to its full-batch value.
5. ``after_step(step, plan, grad_norm)`` sees the pre-clip gradient norm (SASR uses it).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hybridrft.config import Config
from hybridrft.ops import MaskTotals, aggregate
from hybridrft.rollout import RolloutBatch

SFT, RL, MIXED = "sft", "rl", "mixed"


@dataclass(frozen=True)
class StepPlan:
    kind: str  # sft | rl | mixed
    rollouts_per_prompt: int
    demos_per_prompt: int
    info: dict[str, float] = field(default_factory=dict)  # decision metrics, logged with the step


@dataclass
class PolicyOutputs:
    """Teacher-forced policy outputs on a micro-batch, aligned with ``input_ids``."""

    logp: torch.Tensor  # [B, T], with gradient
    entropy: torch.Tensor  # [B, T], with gradient (detach where a weight must not be trained)


@dataclass
class BatchTotals:
    """Full-batch sizes of the objective's named masks, and optional full-batch entropy means."""

    masks: dict[str, MaskTotals]
    entropy_mean: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> MaskTotals:
        return self.masks[name]


class Objective(ABC):
    """Base class of every training method; subclasses live one per file in this package."""

    name: ClassVar[str]

    def __init__(self, config: Config):
        self.config = config
        self.aggregation = config.loss.aggregation
        self.max_len = config.max_completion_length

    @abstractmethod
    def plan(self, step: int) -> StepPlan: ...

    def prepare(self, batch: RolloutBatch, plan: StepPlan) -> dict[str, float]:
        """Compute advantages (and anything else derived from rewards) on the full batch.

        Returns step-level metrics of what was decided here (HPT's share of SFT prompts, say)."""
        return {}

    @abstractmethod
    def masks(self, batch: RolloutBatch, plan: StepPlan) -> dict[str, torch.Tensor]: ...

    def entropy_means_needed(self, plan: StepPlan) -> tuple[str, ...]:
        """Masks whose full-batch mean entropy ``loss`` needs (costs a no-grad forward pass)."""
        return ()

    @abstractmethod
    def loss(
        self, batch: RolloutBatch, out: PolicyOutputs, totals: BatchTotals, plan: StepPlan
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def after_step(self, step: int, plan: StepPlan, grad_norm: float) -> dict[str, float]:
        return {}

    @property
    def needs_reference(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def agg(self, values: torch.Tensor, mask: torch.Tensor, totals: MaskTotals) -> torch.Tensor:
        """The configured aggregation of ``values`` over ``mask``, normalised by full-batch ``totals``."""
        return aggregate(values, mask, self.aggregation, totals=totals, max_len=self.max_len)


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def build_objective(config: Config) -> Objective:
    if config.method not in OBJECTIVES:
        close = difflib.get_close_matches(config.method, list(OBJECTIVES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown method '{config.method}' (known: {', '.join(sorted(OBJECTIVES))}){hint}")
    return OBJECTIVES[config.method](config)


def sequence_mask(mask_rows: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Token mask of the completion tokens of the rows selected by ``mask_rows [N]``."""
    return loss_mask & mask_rows.unsqueeze(-1)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor, totals: MaskTotals) -> torch.Tensor:
    """Contribution of a micro-batch to the full-batch token mean of ``values`` (for metrics)."""
    return (values.detach() * mask).sum() / max(totals.num_tokens, 1.0)
