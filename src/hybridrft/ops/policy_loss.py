"""Per-token policy-gradient loss terms. Each returns ``[B, T]`` values to be aggregated."""

from __future__ import annotations

import torch


LOG_RATIO_BOUND = 20.0  # verl's clamp of log(pi / pi_old) before the exponential


def policy_ratio(logp: torch.Tensor, old_logp: torch.Tensor, *, log_ratio_bound: float | None = LOG_RATIO_BOUND) -> torch.Tensor:
    """``rho = exp(logp - old_logp)``, the log-ratio clamped to ``[-bound, bound]`` first (verl
    ``compute_policy_loss_vanilla``: ``torch.clamp(negative_approx_kl, min=-20.0, max=20.0)``). The clamp
    only acts past ``rho = e^20``, where the unclamped term would dominate the step (or overflow); such a
    token gets no gradient. ``None``: no clamp (LUFFY, UPT and TRL)."""
    log_ratio = logp - old_logp
    if log_ratio_bound is not None:
        log_ratio = torch.clamp(log_ratio, min=-log_ratio_bound, max=log_ratio_bound)
    return torch.exp(log_ratio)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    log_ratio_bound: float | None = LOG_RATIO_BOUND,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO clipped objective as a loss: ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``.

    ``rho = policy_ratio(logp, old_logp)``; ``advantages`` broadcast against ``logp`` (``[B, 1]`` for
    a sequence-level advantage). With ``dual_clip = c`` (> 1; dual-clip PPO, Ye et al. 2020, arXiv
    1912.09729, as verl's ``clip_ratio_c``) the loss of a token with ``A < 0`` is also bounded above by
    ``-c A``: a negative-advantage token whose ratio ran past ``c`` stops pushing (its gradient is 0).
    Returns ``(loss [B, T], clipped [B, T] bool)``, the second marking tokens where a clipped branch
    was taken (for the clip-fraction metric). With ``old_logp = logp.detach()`` (each batch used once)
    the ratio is 1 and the gradient is ``-A grad logp``.
    """
    ratio = policy_ratio(logp, old_logp, log_ratio_bound=log_ratio_bound)
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"the dual clip must be > 1, got {dual_clip}")
        bound = -dual_clip * advantages
        negative = (advantages < 0).expand_as(loss)
        was_clipped = was_clipped | (negative & (loss > bound))
        loss = torch.where(negative, torch.minimum(loss, bound), loss)
    return loss, was_clipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of ``KL(pi || pi_ref)``: ``exp(ref - logp) - (ref - logp) - 1`` (>= 0),
    clamped as verl's ``low_var_kl`` is: the log-ratio to [-20, 20], the estimate to at most 10
    (verl/trainer/ppo/core_algos.py, ``kl_penalty``), so one token the policy has left far behind
    cannot dominate the step."""
    delta = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(delta) - delta - 1.0, min=-10.0, max=10.0)


def shaped_probability(logp: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """``p`` itself, or LUFFY's policy shaping ``f(p) = p / (p + gamma)`` when ``gamma`` is set.

    Off-policy demonstration tokens are trained with behaviour probability 1, so the importance
    ratio is the plain probability ``p = exp(logp)``; shaping reweights the gradient towards
    low-probability tokens (``f'(p) = gamma / (p + gamma)^2``).
    """
    p = torch.exp(logp)
    if gamma is None:
        return p
    return p / (p + gamma)


def uncertainty_weights(logp: torch.Tensor) -> torch.Tensor:
    """CHORD-phi's token weight ``sg(p (1 - p))``: largest for tokens the policy is unsure of (p = 0.5),
    near 0 for tokens it already predicts (p -> 1) and for ones it finds implausible (p -> 0)."""
    p = torch.exp(logp.detach())
    return p * (1.0 - p)
