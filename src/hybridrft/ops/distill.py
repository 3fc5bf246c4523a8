"""Distillation from a teacher: the per-token terms, as pure functions of log-probs and logits.

- ``reverse_kl_advantages``: on-policy distillation as the tinker cookbook runs it
  (thinking-machines-lab/tinker-cookbook @ 9dfcc3a, ``tinker_cookbook/distillation/train_on_policy.py``,
  ``incorporate_kl_penalty``): each sampled token's advantage is the negative reverse KL estimate
  ``-(log p_student - log p_teacher)`` of the token the student chose, optionally summed over the
  future tokens with a discount (``tinker_cookbook/rl/metrics.py``, ``discounted_future_sum_vectorized``).
- ``generalized_jsd``: GKD's generalised Jensen-Shannon divergence over the full vocabulary
  (Agarwal et al. 2023, arXiv 2306.13649, Eq. 1), as TRL computes it
  (huggingface/trl @ f2cd577, ``trl/experimental/gkd/gkd_trainer.py``, ``generalized_jsd_loss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def discounted_future_sum(values: torch.Tensor, gamma: float) -> torch.Tensor:
    """``out[..., t] = sum_k gamma^k values[..., t + k]`` along the last dimension."""
    out = torch.empty_like(values)
    running = torch.zeros_like(values[..., 0])
    for t in range(values.shape[-1] - 1, -1, -1):
        running = values[..., t] + gamma * running
        out[..., t] = running
    return out


def reverse_kl_advantages(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor, *, coef: float = 1.0,
    discount: float = 0.0,
) -> torch.Tensor:
    """``[B, T]``: ``-coef (log p_student - log p_teacher)`` on ``mask`` (0 elsewhere), the student's
    log-probs those it sampled with (the behaviour policy); with ``discount > 0`` each token's value is
    the discounted sum of its own and the later tokens' values. Detached: an advantage, not a loss."""
    mask = mask.to(student_logp.dtype)
    advantages = -coef * mask * (student_logp.detach() - teacher_logp.detach())
    if discount > 0:
        advantages = discounted_future_sum(advantages, discount)
    return advantages


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    """``[...]``: the generalised JSD of each position, summed over the vocabulary (the last dimension):

        JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M),   M = beta p_T + (1 - beta) p_S

    on ``softmax(logits / temperature)``; ``beta = 0`` is ``KL(p_S || p_T)`` written as TRL writes it
    (``kl_div(log p_S, log p_T)``, i.e. the forward ``KL(p_T || p_S)``), ``beta = 1`` the reverse, each as
    TRL's branches compute them. The gradient flows into ``student_logits`` only."""
    student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    if beta == 0:
        per_entry = F.kl_div(student, teacher, reduction="none", log_target=True)
    elif beta == 1:
        per_entry = F.kl_div(teacher, student, reduction="none", log_target=True)
    else:
        mixture = torch.logsumexp(torch.stack([student + math.log1p(-beta), teacher + math.log(beta)]), dim=0)
        per_entry = (beta * F.kl_div(mixture, teacher, reduction="none", log_target=True)
                     + (1 - beta) * F.kl_div(mixture, student, reduction="none", log_target=True))
    return per_entry.sum(-1)


def reverse_kl_policy_terms(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor, *,
    coef: float = 1.0, discount: float = 0.0, log_ratio_bound: float | None = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss [B, T], advantages [B, T])``: the importance-sampled policy-gradient term
    ``-exp(logp - logp_behaviour) A_t`` with ``A_t = reverse_kl_advantages(logp_behaviour, teacher)``,
    the tinker cookbook's ``importance_sampling`` loss on its distillation advantages: the behaviour
    policy is the one that sampled (the sampler's log-probs), whose tokens the teacher scored."""
    advantages = reverse_kl_advantages(behaviour_logp, teacher_logp, mask, coef=coef, discount=discount)
    log_ratio = logp - behaviour_logp.detach()
    if log_ratio_bound is not None:
        log_ratio = torch.clamp(log_ratio, min=-log_ratio_bound, max=log_ratio_bound)
    return -torch.exp(log_ratio) * advantages, advantages
