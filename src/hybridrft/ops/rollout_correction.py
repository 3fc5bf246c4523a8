"""The sampler-trainer mismatch: measured, and corrected by truncated importance sampling.

A sampler (vLLM above all, but any engine with its own kernels, batching or precision) draws rollouts
from ``pi_sampler``, while the loss scores them under the trainer's ``pi_old`` (the same weights,
computed by another program). The difference biases the policy gradient, which assumes the rollouts
came from ``pi_old``. Yao et al. 2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy
RL Training") correct it with a truncated importance weight on each rollout token's policy-gradient
term:

    w_t = min(pi_old(y_t) / pi_sampler(y_t), C)                       (token_truncate; C = 2 there)

verl (rollout importance sampling: token / sequence level, truncate / mask) and TRL
(``vllm_importance_sampling_mode``: token_truncate, token_mask, sequence_truncate, sequence_mask)
offer the same four variants: ``*_mask`` zeroes the weight where the ratio exceeds ``C`` instead of
capping it, and ``sequence_*`` uses one ratio per sequence, the product of its tokens' ratios
``exp(sum_t (log pi_old - log pi_sampler))``, for every token of that sequence.
"""

from __future__ import annotations

import torch

from hybridrft.ops.aggregation import zero_outside


def rollout_importance_weights(
    old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, *, mode: str, cap: float
) -> torch.Tensor:
    """Detached importance weights ``[B, T]`` of the policy-gradient term of the tokens in ``mask``.

    ``old_logp`` is the trainer's log-prob of each token (``pi_old``), ``sampler_logp`` the sampler's
    (both ``[B, T]``; values outside ``mask`` are ignored). ``mode`` is ``token_truncate``,
    ``token_mask``, ``sequence_truncate`` or ``sequence_mask``; ``cap`` is ``C``. Outside ``mask`` the
    weight is 1.
    """
    level, _, action = mode.partition("_")
    if level not in ("token", "sequence") or action not in ("truncate", "mask"):
        raise ValueError(f"unknown rollout importance-sampling mode {mode!r}")
    log_ratio = zero_outside(old_logp.detach() - sampler_logp, mask)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(old_logp)
    # exp of a capped log-ratio: an extreme ratio cannot overflow to inf before it is truncated or masked
    ratio = torch.exp(torch.clamp(log_ratio, max=20.0))
    weights = torch.clamp(ratio, max=cap) if action == "truncate" else ratio * (ratio <= cap)
    return torch.where(mask, weights, torch.ones_like(weights))


def sampler_mismatch(logp: torch.Tensor, sampler_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token ``[B, T]``: ``|log pi_trainer - log pi_sampler|`` and the k3 estimate of
    ``KL(pi_sampler || pi_trainer)`` on the sampler's own tokens, ``r - log r - 1`` with
    ``r = pi_trainer / pi_sampler`` (Schulman's k3, as for the KL to the reference)."""
    log_ratio = logp.detach() - sampler_logp
    return log_ratio.abs(), torch.exp(log_ratio) - log_ratio - 1.0
