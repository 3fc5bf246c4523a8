"""One loss-aggregation function with the modes of the GRPO literature.

Every loss term in hybridrft is a per-token value ``[B, T]`` plus a mask; ``aggregate`` turns it
into a scalar. The normalisers (``num_tokens`` and ``num_seqs``) are those of the whole optimisation
batch, passed in by the caller, so that summing the aggregates of micro-batches gives exactly the
aggregate of the full batch: gradient accumulation and data parallelism then change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_sum_norm")


def zero_outside(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask``, else 0, selected rather than multiplied: a non-finite value at a
    masked position (a -inf log-prob at padding) gives 0, not ``inf * 0 = nan``, and no gradient
    flows to it (verl's ``masked_sum`` selects the same way)."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


@dataclass(frozen=True)
class MaskTotals:
    """Size of one mask over the whole optimisation batch (all micro-batches, all processes)."""

    num_tokens: float
    num_seqs: float

    @staticmethod
    def of(mask: torch.Tensor) -> "MaskTotals":
        mask = mask.float()
        return MaskTotals(float(mask.sum()), float((mask.sum(-1) > 0).sum()))


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    *,
    totals: MaskTotals | None = None,
    max_len: int | None = None,
    divisor: float | None = None,
) -> torch.Tensor:
    """Aggregate per-token ``values [B, T]`` over ``mask [B, T]``.

    - ``token_mean``: ``sum_{i,t} v / N_tokens`` (DAPO; default).
    - ``seq_mean_token_mean``: ``(1/N_seqs) sum_i mean_t v`` (original GRPO).
    - ``seq_mean_token_sum``: ``(1/N_seqs) sum_i sum_t v``.
    - ``seq_mean_token_sum_norm``: ``sum_{i,t} v / (N_seqs * L_max)`` (Dr. GRPO as TRL's ``dr_grpo``
      computes it; ``L_max`` is the configured maximum completion length).
    - ``token_sum_norm``: ``sum_{i,t} v / D``, a constant ``D`` (``divisor``, default ``L_max``):
      verl's ``seq-mean-token-sum-norm`` and the LUFFY/UPT scripts' ``loss_remove_token_mean=True``,
      whose ``D`` is (ranks x gradient-accumulation steps x padded response width).

    ``totals`` gives the full-batch ``N_tokens`` and ``N_seqs``; without it the local mask is the
    whole batch. An empty mask yields 0 (with a gradient path, so callers need no special case).
    """
    totals = totals or MaskTotals.of(mask)
    masked = zero_outside(values, mask)
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        return masked.sum() / max(totals.num_tokens, 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / max(totals.num_seqs, 1.0)
    if mode == "seq_mean_token_sum":
        return masked.sum() / max(totals.num_seqs, 1.0)
    if mode == "seq_mean_token_sum_norm":
        if not max_len:
            raise ValueError("seq_mean_token_sum_norm needs max_len (the maximum completion length)")
        return masked.sum() / (max(totals.num_seqs, 1.0) * max_len)
    if mode == "token_sum_norm":
        if not (divisor or max_len):
            raise ValueError("token_sum_norm needs a divisor (or max_len, its default)")
        return masked.sum() / (divisor or max_len)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")
