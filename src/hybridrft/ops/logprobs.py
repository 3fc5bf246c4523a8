"""Per-token log-probabilities and entropies of a causal LM, without the full ``[B, T, V]`` logits.

The vocabulary projection dominates activation memory for small models with large vocabularies
(SmolLM2: 49k entries). ``token_logprobs_and_entropy`` runs the decoder once, then projects the
hidden states to logits one sequence chunk at a time. Each chunk's projection is wrapped in
activation checkpointing, so autograd keeps only the ``[B, chunk, D]`` hidden slice and recomputes
the chunk's logits during backward: peak logits memory is ``B * chunk * V`` floats, not ``B * T * V``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def logprobs_and_entropy_from_logits(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(target)`` and the full-distribution entropy ``-sum_v p_v log p_v`` per position.

    Computed in float32 whatever the model dtype, because ``log_softmax`` in half precision loses
    the small differences that policy-gradient ratios depend on.
    """
    logp_all = F.log_softmax(logits.float(), dim=-1)
    token_logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return token_logp, entropy


def _project_chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets):
    logits = F.linear(hidden, weight, bias)
    return logprobs_and_entropy_from_logits(logits, targets)


def chunked_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ``hidden [B, T, D]`` through ``weight [V, D]`` chunk by chunk along T.

    Returns ``(logp [B, T], entropy [B, T])`` for the given ``targets [B, T]``. When gradients are
    enabled every chunk is checkpointed so that its ``[B, chunk, V]`` logits are freed after the
    forward and rebuilt in backward.
    """
    logps, entropies = [], []
    use_checkpoint = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    for start in range(0, hidden.shape[1], chunk_size):
        h = hidden[:, start : start + chunk_size]
        t = targets[:, start : start + chunk_size]
        if use_checkpoint:
            lp, ent = checkpoint(_project_chunk, h, weight, bias, t, use_reentrant=False)
        else:
            lp, ent = _project_chunk(h, weight, bias, t)
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1)


def token_logprobs_and_entropy(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy of each next token under a Hugging Face causal LM.

    Position ``t`` of the outputs scores token ``input_ids[:, t]`` given the tokens before it, so the
    outputs line up with ``input_ids`` (position 0, which has no context, is 0). Loss masks built over
    ``input_ids`` therefore apply directly.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # hidden[:, t] predicts input_ids[:, t + 1]
    logp, entropy = chunked_logprobs_and_entropy(
        hidden[:, :-1], head.weight, input_ids[:, 1:], bias=head.bias, chunk_size=chunk_size
    )
    pad = logp.new_zeros(logp.shape[0], 1)
    return torch.cat([pad, logp], dim=1), torch.cat([pad, entropy], dim=1)
