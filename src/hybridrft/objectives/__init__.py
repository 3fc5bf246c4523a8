"""Training methods, one per file, registered by name (``method:`` in a recipe)."""

from hybridrft.objectives import chord, distill, grpo, hpt, luffy, prefix_rft, relift, sasr, sft, srft, static_mix, two_stage  # noqa: F401  (registers them)
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
from hybridrft.objectives.interleaved import FineTuningPlan, InterleavedFineTuning, PromptOutcome

__all__ = [
    "MIXED",
    "OBJECTIVES",
    "RL",
    "SFT",
    "BatchTotals",
    "FineTuningPlan",
    "InterleavedFineTuning",
    "Objective",
    "PolicyOutputs",
    "PromptOutcome",
    "StepPlan",
    "build_objective",
    "register_objective",
]
