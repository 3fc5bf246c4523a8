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

    The std is the unbiased sample std (as in the GRPO reference implementations); a group whose
    members all have the same reward gets advantage 0.
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
        mean = stats.mean()
        centred = rewards[members] - mean
        if scale == "group":
            std = stats.std() if stats.numel() > 1 else stats.new_tensor(0.0)
            centred = centred / (std + eps)
        advantages[members] = centred
    if scale == "batch":
        stats = rewards[in_stats]
        std = stats.std() if stats.numel() > 1 else stats.new_tensor(0.0)
        advantages = advantages / (std + eps)
    return advantages
