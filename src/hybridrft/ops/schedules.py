"""Scalar schedules of the training step (pure functions of the step number)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, peak: float, valley: float, warmup_steps: int, decay_steps: int) -> float:
    """Linear rise from ``valley`` to ``peak`` over ``warmup_steps``, then cosine decay to ``valley``
    over ``decay_steps``, then ``valley``. Steps count from 1; step ``warmup_steps`` is at the peak.

    ``valley + (peak - valley) * (1 + cos(pi * s / decay_steps)) / 2`` for ``s = step - warmup_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return valley + (peak - valley) * step / warmup_steps
    since_peak = step - warmup_steps
    if decay_steps <= 0 or since_peak >= decay_steps:
        return valley if decay_steps > 0 or since_peak > 0 else peak
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * since_peak / decay_steps))
