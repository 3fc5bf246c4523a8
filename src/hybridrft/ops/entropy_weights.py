"""Entropy statistics and the entropy-derived loss weights of SRFT (Fu et al. 2025, arXiv 2506.19767)."""

from __future__ import annotations

import torch

from hybridrft.ops.aggregation import zero_outside

ENTROPY_GRANULARITIES = ("sequence", "token", "batch")


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B, T]`` over each row's masked positions; ``[B]`` (0 for an empty row)."""
    return zero_outside(values, mask).sum(-1) / mask.to(values.dtype).sum(-1).clamp(min=1.0)


def entropy_for_weights(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    granularity: str,
    *,
    batch_mean: float | None = None,
) -> torch.Tensor:
    """The detached entropy ``H`` that a weight uses at each position, shaped ``[B, T]``.

    - ``token``: each token's own entropy.
    - ``sequence``: the mean entropy over that sequence's masked tokens.
    - ``batch``: one number for the whole optimisation batch, passed in as ``batch_mean`` because a
      micro-batch cannot see the rest of the batch.
    """
    entropy = entropy.detach()
    if granularity == "token":
        return entropy
    if granularity == "sequence":
        return masked_sequence_mean(entropy, mask).unsqueeze(-1).expand_as(entropy)
    if granularity == "batch":
        if batch_mean is None:
            raise ValueError("batch-granularity entropy weights need the batch mean entropy")
        return torch.full_like(entropy, float(batch_mean))
    raise ValueError(f"entropy granularity must be one of {ENTROPY_GRANULARITIES}, got {granularity!r}")


def entropy_weight(entropy_h: torch.Tensor, *, coef: float, sign: float) -> torch.Tensor:
    """``w = coef * exp(sign * sg(H))``: SRFT's ``w_SFT = 0.5 exp(-H)`` and ``w_RL = 0.1 exp(H)``."""
    return coef * torch.exp(sign * entropy_h.detach())
