"""Process-wide counts of reward calls that failed, so a trainer can log them every step.

A reward that raises, times out or returns a score that is not a finite number scores 0 instead of
stopping training; these counters are how that stays visible.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class RewardCounters:
    """Running totals since the last :meth:`reset`.

    ``calls``: completions checked by the math reward (one guarded worker call each).
    ``errors``: math-reward checks that raised; whole batches on which a reward function raised
    (one per failing function call in :func:`~hybridrft.rewards.registry.combine_rewards`); and
    single scores a reward function returned that are NaN, infinite or not a number (one each).
    ``timeouts``: math-reward checks that ran past their time limit (not also counted as errors).
    ``worker_restarts``: reward worker processes started after the first one: after a timeout
    (the worker is killed), or after the worker died (killed from outside, out of memory, a crash).
    """

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    worker_restarts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, calls: int = 0, errors: int = 0, timeouts: int = 0, worker_restarts: int = 0) -> None:
        # Rewards may run in several threads at once; += on an attribute is not atomic.
        with self._lock:
            self.calls += calls
            self.errors += errors
            self.timeouts += timeouts
            self.worker_restarts += worker_restarts

    def snapshot(self) -> dict[str, int]:
        """Metric names and values, ready for a metrics line."""
        with self._lock:
            return {
                "reward/calls": self.calls,
                "reward/errors": self.errors,
                "reward/timeouts": self.timeouts,
                "reward/worker_restarts": self.worker_restarts,
            }

    def reset(self) -> None:
        with self._lock:
            self.calls = self.errors = self.timeouts = self.worker_restarts = 0


COUNTERS = RewardCounters()


def reward_counters() -> dict[str, int]:
    """Process-wide counters: ``reward/calls``, ``reward/errors``, ``reward/timeouts``,
    ``reward/worker_restarts``."""
    return COUNTERS.snapshot()


def reset_reward_counters() -> None:
    """Zero the process-wide counters (a trainer may do this per step to log per-step counts)."""
    COUNTERS.reset()
