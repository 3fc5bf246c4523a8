"""Training methods, one per file, registered by name (``method:`` in a recipe)."""

from hybridrft.objectives import grpo, sasr, sft, srft  # noqa: F401  (registers the objectives)
from hybridrft.objectives.base import (
    MIXED,
    OBJECTIVES,
    RL,
    SFT,
    BatchTotals,
    Objective,
    PolicyOutputs,
    StepPlan,
    build_objective,
    register_objective,
)

__all__ = [
    "MIXED",
    "OBJECTIVES",
    "RL",
    "SFT",
    "BatchTotals",
    "Objective",
    "PolicyOutputs",
    "StepPlan",
    "build_objective",
    "register_objective",
]
