"""Scalar schedules of the training step (pure functions of the step number)."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, *, peak: float, valley: float, warmup_steps: int, decay_steps: int, warmup_start: float = 0.0
) -> float:
    """CHORD's ``mu`` schedule (Trinity-RFT, ``trinity/algorithm/policy_loss_fn/chord_policy_loss.py``,
    ``mu_schedule_function``), steps counted from 1:

    - ``step < warmup_steps``: linear from ``warmup_start`` (0 in Trinity-RFT) towards ``peak``,
      ``warmup_start + (peak - warmup_start) * step / warmup_steps``;
    - ``step >= warmup_steps + decay_steps``: ``valley`` (so with no warm-up and no decay, always ``valley``);
    - otherwise the cosine from ``peak`` to ``valley``:
      ``valley + (peak - valley) * (1 + cos(pi * (step - warmup_steps) / decay_steps)) / 2``.
    """
    if step < warmup_steps:
        return warmup_start + (peak - warmup_start) * step / warmup_steps
    if step >= warmup_steps + decay_steps:
        return valley
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))
