"""Prefix-RFT's tensor functions: advantages of rollouts that continue a demonstration prefix, and the
reshaping of the prefix tokens' advantages and log-probs (Huang et al. 2025, arXiv 2507.01679).

Reference: ZeroYuHuang/prefix_rft @ 5f5d2a1, ``recipe/prefix_rft/core_algos.py``
(``compute_grpo_prefix_outcome_advantage``, ``compute_dr_grpo_prefix_outcome_advantage``,
``compute_dr_grpo_prefix_v2_outcome_advantage``) and ``recipe/prefix_rft/dp_actor.py``
(``reshape_func``). Each function says where it departs from the reference's arithmetic; none does
except where stated.

A step's rollouts for one prompt are split into *prefix groups*: the rollouts that continue no
prefix (``prefix == UNPREFIXED``) form one group, and each drawn prefix forms its own group of
``rollouts_per_prefix`` continuations. A rollout's completion is ``prefix tokens + its own tokens``;
``prefix_mask`` marks the prefix tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

UNPREFIXED = -1  # the prefix id of a rollout that continues no demonstration prefix
PREFIX_ADVANTAGES = ("grpo", "dr_grpo", "dr_grpo_v2")
PREFIX_RESHAPERS = ("identity", "importance_sampling", "luffy", "silu", "relu", "entropy", "entropy_low", "position")


def _group_means(scores: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the mean, the unbiased standard deviation (0 for a group of one) and the size of the
    row's group, the groups given by equal ``keys``."""
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=scores.dtype).index_add_(0, inverse, scores)
    means = sums / counts.to(scores.dtype)
    squares = torch.zeros(len(counts), dtype=scores.dtype).index_add_(0, inverse, (scores - means[inverse]) ** 2)
    stds = torch.sqrt(squares / (counts.to(scores.dtype) - 1).clamp(min=1))
    return means[inverse], stds[inverse], counts[inverse]


def prefix_group_advantages(
    scores: torch.Tensor,
    prompt: torch.Tensor,
    prefix: torch.Tensor,
    *,
    estimator: str = "dr_grpo",
    rollouts_per_prefix: int = 1,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [N], A_prefix [N])``: the advantage of each rollout's own tokens and of its prefix tokens.

    Rollouts are grouped by ``(prompt, prefix)``. With ``m`` the group's mean and ``s`` its standard
    deviation (unbiased), and ``m_0`` the mean reward of the prompt's unprefixed group:

    - ``grpo``:       ``A = (r - m) / (s + eps)``; a group of one has ``m = 0, s = 1``
    - ``dr_grpo``:    ``A = r - m``; a group of one has ``m = 0`` (so ``A = r``)
    - ``dr_grpo_v2``: ``A = r - m`` over any group (so ``A = 0`` for a group of one)

    and for a prefixed rollout ``A_prefix = (A - m_0) / rollouts_per_prefix`` (0 for an unprefixed
    one): the prefix, shared by the group's continuations, is credited by how much the group did
    better than the prompt's unprefixed rollouts, split among them. ``A`` is subtracted from ``m_0``
    after its own normalisation, as the reference does (``p_scores[i] = scores[i] - mean['0000']``
    with ``scores[i]`` already normalised).
    """
    if estimator not in PREFIX_ADVANTAGES:
        raise ValueError(f"prefix advantage estimator must be one of {', '.join(PREFIX_ADVANTAGES)}, got {estimator!r}")
    scores = scores.float()
    keys = torch.stack([prompt.long(), prefix.long()], dim=-1)
    mean, std, count = _group_means(scores, keys)
    if estimator != "dr_grpo_v2":  # the reference's rule for a group of one: mean 0 (and std 1)
        single = count == 1
        mean, std = torch.where(single, 0.0, mean), torch.where(single, 1.0, std)
    advantage = (scores - mean) / (std + eps) if estimator == "grpo" else scores - mean
    prefixed = prefix != UNPREFIXED
    unprefixed_mean = torch.zeros_like(scores)
    for p in prompt[prefixed].unique().tolist():
        own = (prompt == p) & ~prefixed
        if not own.any():
            raise ValueError(f"prompt {p} has prefixed rollouts but no unprefixed one: the prefix advantage "
                             "is measured against the prompt's unprefixed group (prefix_rft.num_empty_prefix >= 1)")
        unprefixed_mean[prompt == p] = mean[own][0]
    prefix_advantage = torch.where(prefixed, (advantage - unprefixed_mean) / rollouts_per_prefix, 0.0)
    return advantage, prefix_advantage


def token_advantages(advantage: torch.Tensor, prefix_advantage: torch.Tensor, completion_mask: torch.Tensor,
                     prefix_mask: torch.Tensor) -> torch.Tensor:
    """``[N, T]``: ``A_prefix`` on prefix tokens, ``A`` on the rollout's own tokens, 0 elsewhere."""
    own = advantage.unsqueeze(-1) * completion_mask
    return torch.where(prefix_mask, prefix_advantage.unsqueeze(-1), own)


def lowest_entropy_tokens(entropy: torch.Tensor, prefix_mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """``[N, T]`` bool: the ``int(n * fraction)`` prefix tokens of lowest entropy among the ``n`` prefix
    tokens given (the reference ranks a micro-batch's prefix tokens, in row-major order, by a sort)."""
    values = entropy[prefix_mask]
    chosen = torch.zeros_like(values, dtype=torch.bool)
    order = torch.sort(values, stable=True).indices
    chosen[order[: int(len(values) * fraction)]] = True
    out = torch.zeros_like(prefix_mask)
    out[prefix_mask] = chosen
    return out


def reshape_prefix(
    reshapers: tuple[str, ...] | list[str],
    advantages: torch.Tensor,
    logp: torch.Tensor,
    prefix_mask: torch.Tensor,
    *,
    old_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    entropy_fraction: float = 0.0,
    shaping_gamma: float = 0.1,
    relative_position: torch.Tensor | None = None,
    position_low: float | None = None,
    position_high: float | None = None,
    position_eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, logp)`` after each reshaper in turn, as the reference's ``reshape_func``; the
    clipped surrogate then uses ``exp(logp' - old_logp)`` as its ratio. Only prefix tokens change,
    except under ``entropy_low`` (below). A batch with no prefix token is returned unchanged.

    - ``identity``: nothing.
    - ``importance_sampling``: ``logp' = logp + old_logp``, so the ratio is ``pi_theta`` itself
      (behaviour probability 1, as LUFFY's off-policy tokens).
    - ``luffy``: ``logp' = logp + old_logp - log(pi_theta + gamma)``: the ratio is LUFFY's shaped
      ``pi / (pi + gamma)`` (gamma 0.1 in the reference).
    - ``silu``, ``relu``: the prefix advantage through SiLU or ReLU.
    - ``entropy``: the advantage of the ``entropy_fraction`` lowest-entropy prefix tokens set to 0
      (only the uncertain part of the demonstration is trained; the paper keeps the top 20%).
    - ``entropy_low``: the reverse, *and everything else*: every token's advantage is set to 0
      except those lowest-entropy prefix tokens (the reference's ``adv[adv_mask] = 0`` with
      ``adv_mask`` true outside the prefix too; kept as it is).
    - ``position``: prefix tokens reweighted by the inverse of the density of their relative position
      ``u`` in the demonstration under a prefix length uniform in ``[a, b]`` (``f(u) = 2 / (a + b)``
      for ``u <= a``, ``2 (b - u) / (b^2 - a^2)`` up to ``b``, 0 beyond), ``w = 1 / max(f, eps)``,
      normalised to mean 1 over the prefix tokens: a late prefix token, rarely inside a prefix, is
      weighted up.
    """
    if not bool(prefix_mask.any()):
        return advantages, logp
    for name in reshapers:
        if name == "identity":
            continue
        if name in ("importance_sampling", "luffy"):
            if old_logp is None:
                raise ValueError(f"the {name} reshaper needs the behaviour log-probs")
            shifted = logp + old_logp
            if name == "luffy":
                shifted = shifted - torch.log(torch.exp(logp) + shaping_gamma)
            logp = torch.where(prefix_mask, shifted, logp)
        elif name in ("silu", "relu"):
            activation = F.silu if name == "silu" else F.relu
            advantages = torch.where(prefix_mask, activation(advantages), advantages)
        elif name in ("entropy", "entropy_low"):
            if entropy is None:
                raise ValueError(f"the {name} reshaper needs the token entropies")
            lowest = lowest_entropy_tokens(entropy.detach(), prefix_mask, entropy_fraction)
            zeroed = lowest if name == "entropy" else ~lowest
            advantages = torch.where(zeroed, 0.0, advantages)
        elif name == "position":
            if relative_position is None or position_low is None or position_high is None:
                raise ValueError("the position reshaper needs the relative positions and the prefix bounds")
            a, b, u = position_low, position_high, relative_position
            density = torch.where(u <= a, 2.0 / (a + b), torch.where(u <= b, 2.0 * (b - u) / (b**2 - a**2), 0.0))
            weight = 1.0 / density.clamp_min(position_eps)
            weight = weight / (weight[prefix_mask].sum() / prefix_mask.sum())
            advantages = torch.where(prefix_mask, weight * advantages, advantages)
        else:
            raise ValueError(f"unknown prefix reshaper {name!r} (known: {', '.join(PREFIX_RESHAPERS)})")
    return advantages, logp


def relative_prefix_positions(prefix_lengths: list[int], demo_lengths: list[int], width: int) -> torch.Tensor:
    """``[N, width]``: ``k / demo_length`` at the k-th completion token (1-based) of each prefix; the
    reference's ``prefix_relpos`` (``-1`` on the continuation, which the position reshaper never reads)."""
    out = torch.zeros(len(prefix_lengths), width)
    for row, (length, demo) in enumerate(zip(prefix_lengths, demo_lengths)):
        out[row, :length] = torch.arange(1, length + 1, dtype=torch.float32) / max(demo, 1)
    return out


PREFIX_CONTROLLERS = ("const", "linear_decay", "cosine_decay")


def controlled_value(
    kind: str,
    step: int,
    *,
    init: float,
    target: float = 0.0,
    n_steps: int = 1,
    warmup_ratio: float = 0.0,
    delay_steps: int = 0,
    delay_value: float = 1.0,
) -> float:
    """A bound of the prefix fraction at ``step``, as the reference's controllers
    (``scheduler/global_step.py``): ``delay_value`` for the first ``delay_steps`` steps
    (``DelayWrapper``), then, counting from there, a linear rise from 0 to ``init`` over
    ``int(n_steps * warmup_ratio)`` steps, then

    - ``const``: ``init`` (no warm-up);
    - ``linear_decay``: ``init`` to ``target`` linearly over ``n_steps`` steps, ``target`` after;
    - ``cosine_decay``: ``target + (init - target) (1 + cos(pi k / n_steps)) / 2``, ``target`` after
      ``n_steps`` (a rise when ``target > init``).
    """
    if kind not in PREFIX_CONTROLLERS:
        raise ValueError(f"prefix controller must be one of {', '.join(PREFIX_CONTROLLERS)}, got {kind!r}")
    if step < delay_steps:
        return delay_value
    step -= delay_steps
    if kind == "const":
        return init
    warmup = int(n_steps * warmup_ratio)
    if step < warmup:
        return (step / warmup) * init
    after = step - warmup
    if kind == "linear_decay":
        if after >= n_steps:
            return target
        return target + (1.0 - after / n_steps) * (init - target)
    if after > n_steps:
        return target
    decay = 0.5 * (1 + math.cos(math.pi * after / n_steps))
    if init > target:
        return target + decay * (init - target)
    return init + (1 - decay) * (target - init)


def beta_between(low: float, high: float, draw: float) -> float:
    """The reference's ``BetaSampler``: a Beta draw in [0, 1] mapped onto ``[min, max]`` of the bounds."""
    lower, higher = min(low, high), max(low, high)
    return lower + (higher - lower) * draw


def prefix_length(fraction: float, demo_length: int, min_length: int) -> int:
    """Tokens of a demonstration of ``demo_length`` tokens given as prefix at ``fraction`` (the reference's
    ``_get_prefix``): 0 for fraction 0 or an empty demonstration, else ``int(fraction * length)`` raised
    to ``min_length`` and cut to ``length - 1``, so that the policy always writes at least the last token."""
    if fraction == 0 or demo_length == 0:
        return 0
    length = max(int(fraction * demo_length), min_length)
    return min(length, demo_length - 1)
