"""A step's metrics: timing, the rollouts' statistics, and how values from updates and processes combine.

Every logged value is global: statistics of the rollouts are computed from the per-sequence
columns of every process; loss terms, which each process computes as its contribution to the
global mean, are summed over processes; times are the slowest process's.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import torch

from hybridrft.rollout import RolloutBatch


def synchronized_clock(device: torch.device) -> float:
    """``perf_counter`` after the device's queued work is done (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepTimer:
    """Seconds spent per phase of a step, logged as ``time/<phase>``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = synchronized_clock(self.device)
        try:
            yield
        finally:
            self.seconds[phase] += synchronized_clock(self.device) - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{phase}": seconds for phase, seconds in self.seconds.items()}


def mean_over_updates(per_update: list[dict[str, float]]) -> dict[str, float]:
    """A step's metrics from its updates: the mean of each (time: the sum; extremes: the extreme)."""
    out: dict[str, float] = {}
    for name in {name for update in per_update for name in update}:
        values = [update[name] for update in per_update if name in update]
        if name.startswith("time/"):
            out[name] = sum(values)
        elif name.endswith("_min"):
            out[name] = min(values)
        elif name.endswith("_max"):
            out[name] = max(values)
        else:
            out[name] = sum(values) / len(values)
    return out


SHARED = ("grad_norm", "lr", "skipped", "large_grad_skip")  # already the same on every process


def combine_contributions(per_process: list[dict[str, float]]) -> dict[str, float]:
    """One update's metrics from every process's: loss terms are contributions to a global mean and
    add up; extremes take the extreme; times the slowest; the shared values are taken as they are."""
    out: dict[str, float] = {}
    for name in {name for metrics in per_process for name in metrics}:
        values = [metrics[name] for metrics in per_process if name in metrics]
        if name in SHARED:
            out[name] = values[0]
        elif name.startswith("time/"):
            out[name] = max(values)
        elif name.endswith("_min"):
            out[name] = min(values)
        elif name.endswith("_max"):
            out[name] = max(values)
        else:
            out[name] = sum(values)
    return out


def combine_means(per_process: list[dict[str, float]]) -> dict[str, float]:
    """Per-prompt means (a method's decision metrics) over equal prompt shares: their mean; a metric
    named ``*_min`` or ``*_max`` is an extreme, combined by taking the extreme."""
    names = {name for metrics in per_process for name in metrics}
    combined = {}
    for name in names:
        values = [m[name] for m in per_process if name in m]
        combined[name] = min(values) if name.endswith("_min") else max(values) if name.endswith("_max") else sum(values) / len(values)
    return combined


def sequence_columns(batch: RolloutBatch, per_fn: dict[str, list[float]], positions: list[int]) -> dict[str, list]:
    """What the rollout statistics need of each sequence, as plain lists (cheap to gather); a
    sequence's group is its prompt's position in the step's global batch."""
    columns = {
        "reward": batch.reward.tolist(),
        "is_demo": batch.is_demo.tolist(),
        "group": [positions[g] for g in batch.group.tolist()],
        "length": batch.completion_lengths.tolist(),
        "truncated": batch.truncated.tolist(),
        "advantage": batch.advantage.tolist() if batch.advantage is not None else None,
    }
    columns.update({f"reward/{name}": list(scores) for name, scores in per_fn.items()})
    return columns


def concatenate_columns(per_process: list[dict[str, list]]) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for name in per_process[0]:
        parts = [columns[name] for columns in per_process]
        out[name] = None if any(p is None for p in parts) else torch.tensor([v for p in parts for v in p])
    return out


def rollout_metrics(columns: dict[str, torch.Tensor | None], demo_truncated: int, threshold: float) -> dict[str, float]:
    """Rewards, accuracy, lengths and group solve shares of a step's rollouts; the demonstrations'
    rewards and lengths (a demonstration that does not earn full reward is counted: bad data)."""
    reward, is_demo, lengths = columns["reward"].float(), columns["is_demo"].bool(), columns["length"].float()
    rollout, demo = ~is_demo, is_demo
    out: dict[str, float] = {}
    if rollout.any():
        r = reward[rollout]
        out.update(
            {
                "reward/mean": float(r.mean()),
                "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
                "accuracy/rollout": float((r >= threshold).float().mean()),
                "length/response_mean": float(lengths[rollout].mean()),
                "length/response_max": float(lengths[rollout].max()),
                "length/truncated_frac": float(columns["truncated"][rollout].float().mean()),
            }
        )
        for name, scores in columns.items():
            if name.startswith("reward/") and scores is not None:
                out[name] = float(scores.float()[rollout].mean())
        if columns["advantage"] is not None:
            out["advantage/abs_mean"] = float(columns["advantage"].float()[rollout].abs().mean())
        # HPT's and LUFFY's diagnostic: groups whose rollouts all, or none, solved the prompt
        group = columns["group"].long()
        solved = torch.zeros(int(group.max()) + 1).index_add_(0, group[rollout], (r >= threshold).float())
        sizes = torch.zeros_like(solved).index_add_(0, group[rollout], torch.ones_like(r))
        sampled = sizes > 0
        out["groups/all_correct"] = float((solved[sampled] == sizes[sampled]).float().mean())
        out["groups/none_correct"] = float((solved[sampled] == 0).float().mean())
    if demo.any():
        out["reward/demo_mean"] = float(reward[demo].mean())
        out["data/demo_reward_mismatch"] = int((reward[demo] < threshold).sum())
        out["data/demo_truncated"] = demo_truncated
        out["length/demo_mean"] = float(lengths[demo].mean())
    return out


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)



def step_costs(metrics: dict[str, Any], times: list[dict[str, float]], updates: int) -> dict[str, float]:
    """The step's times (each the slowest process's, from every process's ``times``) and throughput."""
    out = {name: max(t[name] for t in times if name in t) for name in times[0]}
    out["throughput/tokens_per_s"] = metrics["tokens/trained"] * updates / out["time/step"]
    generate_s = out.get("time/generate", 0.0)
    out["throughput/generated_tokens_per_s"] = metrics["tokens/generated"] / generate_s if generate_s else 0.0
    return out


def global_step_metrics(processes, decisions: dict, batch: RolloutBatch, per_fn, positions, generated: int,
                        demo_truncated: int, threshold: float) -> dict[str, Any]:
    """A step's batch statistics over every process: the method's decision metrics (per-prompt
    means over equal shares), rollout statistics from every sequence, token counts summed."""
    metrics = combine_means(processes.gather(decisions))
    columns = concatenate_columns(processes.gather(sequence_columns(batch, per_fn, positions)))
    trained, generated, demo_truncated = processes.sum([int(batch.attention_mask.sum()), generated, demo_truncated])
    metrics.update(rollout_metrics(columns, int(demo_truncated), threshold))
    metrics.update({"tokens/trained": int(trained), "tokens/generated": int(generated)})
    return metrics


def add_contributions(sums: dict[str, float], terms: dict[str, Any]) -> None:
    """Add a micro-batch's loss terms (contributions to the batch value) into ``sums``; extremes take the extreme."""
    for name, value in terms.items():
        value = float(value)
        if name.endswith("_min"):
            sums[name] = min(sums.get(name, value), value)
        elif name.endswith("_max"):
            sums[name] = max(sums.get(name, value), value)
        else:
            sums[name] = sums.get(name, 0.0) + value
