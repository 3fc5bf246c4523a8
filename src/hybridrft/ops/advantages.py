"""Advantage estimators over groups of completions that share a prompt (GRPO family)."""

from __future__ import annotations

import torch

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor,
    group: torch.Tensor,
    *,
    in_stats: torch.Tensor | None = None,
    scale: str = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantage ``A_k = (r_k - mean(r_group)) / (std(r_group) + eps)``.

    Args:
        rewards: ``[N]`` scalar reward per completion.
        group: ``[N]`` integer prompt index of each completion.
        in_stats: ``[N]`` bool, which completions enter the group mean and std. Every completion
            gets an advantage, but only these define the baseline. SRFT (Eq. 7) puts the
            demonstrations into the statistics (the augmented group); LUFFY keeps them out.
        scale: ``group`` divides by the group's std, ``batch`` by the std of all rewards that enter
            the statistics, ``none`` does not divide (Dr. GRPO).

    The std is the unbiased sample std (as in the GRPO reference implementations). Statistics of a
    single member have mean 0 and std 1, so that member's advantage is its reward, as verl's
    ``compute_grpo_outcome_advantage`` and LUFFY's code give it. Statistics with no spread (equal
    rewards) divide by 1 instead of ``0 + eps``, as LUFFY's rollouts-only estimator
    (``compute_grpo_outcome_advantage_split``) does: the members inside them get advantage 0 either
    way, and a member outside them (a demonstration that solved a prompt no rollout solved) gets
    ``r - mean``, not ``1e6``.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    rewards = rewards.float()
    if in_stats is None:
        in_stats = torch.ones_like(rewards, dtype=torch.bool)
    advantages = torch.zeros_like(rewards)
    for g in group.unique():
        members = group == g
        stats = rewards[members & in_stats]
        if stats.numel() == 0:
            continue
        centred = rewards[members] - (stats.mean() if stats.numel() > 1 else 0.0)
        if scale == "group":
            centred = centred / (_spread(stats) + eps)
        advantages[members] = centred
    if scale == "batch":
        advantages = advantages / (_spread(rewards[in_stats]) + eps)
    return advantages


def _spread(stats: torch.Tensor) -> torch.Tensor:
    """Unbiased std, or 1 where it is 0 or undefined (a single member; see ``group_advantages``)."""
    std = stats.std() if stats.numel() > 1 else stats.new_tensor(0.0)
    return torch.where(std > 0, std, torch.ones_like(std))
