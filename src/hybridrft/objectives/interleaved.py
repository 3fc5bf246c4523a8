"""Interleaved fine-tuning: a building block for methods that, after a step's own updates, fine-tune
on training examples they chose from what earlier steps showed (ReLIFT, relift.py).

The step's own prompts come from the prompt stream; these examples do not. So the contract with the
trainer has one more call, made after the step's updates (not on a step that was skipped):

1. The trainer gathers every prompt of the step's global batch, in global order and the same on
   every process, as a ``PromptOutcome``: its index in the training set and its rollouts' rewards.
2. ``plan_fine_tuning(step, outcomes)`` updates the method's state (ReLIFT: its buffer of unsolved
   prompts) and returns a ``FineTuningPlan``: decision metrics for the step's log, and, when an
   update is due, the training-set indices of the examples to fine-tune on and how.
3. The trainer shares those examples out among the processes (process ``r`` takes the ``r``-th
   contiguous part), builds a batch of their demonstrations, runs ``prepare_batch`` and ``step_loss``
   with the plan's ``update_plan`` (an SFT plan), and steps a second AdamW, whose moments are kept
   apart from the step optimizer's, at the plan's constant learning rate and gradient clip. The
   prompt stream does not advance.

Examples are named by their index in the training set, which is stable across runs, resumes and
process counts; the method's state holds indices only, so it is plain data in a checkpoint.

Why a second update inside the step, and not a step of its own whose prompts the plan names: the
reference (ReLIFT) fine-tunes right after the RL update of the same step, on demonstrations only,
with no rollouts, and counts no extra step; a step of its own would sample for nothing, advance
the learning-rate schedule and the step count, and share the step optimizer's moments. DeepSpeed
applies its optimizer inside the backward pass and cannot hold a second one: such a run is refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from hybridrft.objectives.base import StepPlan


@dataclass(frozen=True)
class PromptOutcome:
    """One prompt of a step's global batch, as an interleaved method sees it."""

    index: int  # the prompt's index in the trainer's training set
    rollout_rewards: tuple[float, ...]  # its rollouts' rewards, in sampling order


@dataclass(frozen=True)
class FineTuningPlan:
    """What an interleaved method asks for after a step's own updates."""

    info: dict[str, float] = field(default_factory=dict)  # decision metrics, logged with the step
    indices: tuple[int, ...] = ()  # training-set indices to fine-tune on, in order; empty: no update
    update_plan: StepPlan | None = None  # the update's plan: kind sft, demonstrations per example, learning rate
    max_grad_norm: float | None = None  # the fine-tuning update's own gradient clip (None: not clipped)
    updates: int = 1  # optimizer updates the examples are dealt into (rollout.update_parts)
    epochs: int = 1  # passes over the examples

    def __post_init__(self):
        if self.indices and (self.update_plan is None or self.update_plan.learning_rate is None):
            raise ValueError("a fine-tuning update needs an update_plan with its learning rate")


class InterleavedFineTuning(ABC):
    """Mixin of an ``Objective`` whose steps may be followed by a fine-tuning update (see above)."""

    @property
    @abstractmethod
    def fine_tuning_examples(self) -> int:
        """Examples per fine-tuning update: a global count, which must divide among the processes."""

    @property
    def fine_tuning_updates(self) -> int:
        """Optimizer updates per fine-tuning batch (each process's share must split into them)."""
        return 1

    @abstractmethod
    def plan_fine_tuning(self, step: int, outcomes: list[PromptOutcome]) -> FineTuningPlan:
        """Take in the step's prompt outcomes (the whole global batch) and say whether to fine-tune."""
