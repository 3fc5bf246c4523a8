"""``PolicyScorer``: the policy as training calls it, a module from token ids to per-token log-probs
and entropies.

Training never needs logits, only the log-prob of each completion token and the entropy at it, which
``ops`` computes from the decoder's hidden states with a chunked vocabulary projection (and, for
rows that share a prompt, one prompt pass per group). That computation is this module's
``forward``, so the engine accelerate wraps around it (DDP's gradient hooks, FSDP's parameter
gathering, DeepSpeed) sees one ordinary forward call per micro-batch.
"""

from __future__ import annotations

import torch

from hybridrft.ops import shared_prompt_logprobs_and_entropy, token_logprobs_and_entropy


class PolicyScorer(torch.nn.Module):
    def __init__(self, policy: torch.nn.Module, *, shared_prompt_forward: bool, chunk_size: int, temperature: float):
        super().__init__()
        self.policy = policy
        self.shared_prompt_forward = shared_prompt_forward
        self.chunk_size = chunk_size
        self.temperature = temperature  # the distribution the rollouts were drawn from: logits / T
        # FSDP's auto-wrap policy reads the layer classes to shard from the module it is given
        self._no_split_modules = getattr(policy, "_no_split_modules", None)

    @property
    def config(self):  # what accelerate and DeepSpeed read off the model they prepare
        return self.policy.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, group: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log-probs, entropies)``, each ``[N, T]`` aligned with ``input_ids``."""
        if self.shared_prompt_forward:
            return shared_prompt_logprobs_and_entropy(
                self.policy, input_ids, attention_mask, loss_mask, group,
                chunk_size=self.chunk_size, temperature=self.temperature,
            )
        return token_logprobs_and_entropy(
            self.policy, input_ids, attention_mask, chunk_size=self.chunk_size, temperature=self.temperature
        )
