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

from hybridrft.ops import shared_prompt_logprobs_and_entropy, token_logprobs_and_entropy, token_logprobs_entropy_and_jsd
from hybridrft.rollout import RolloutBatch, group_micro_batches, length_sorted_micro_batches


class PolicyScorer(torch.nn.Module):
    def __init__(self, policy: torch.nn.Module, *, shared_prompt_forward: bool, chunk_size: int, temperature: float):
        super().__init__()
        self.policy = policy
        self.shared_prompt_forward = shared_prompt_forward
        self.chunk_size = chunk_size
        self.temperature = temperature  # the distribution the rollouts were drawn from: logits / T
        # FSDP's auto-wrap policy reads the layer classes to shard from the module it is given
        self._no_split_modules = getattr(policy, "_no_split_modules", None)

    @classmethod
    def for_run(cls, config, policy: torch.nn.Module) -> "PolicyScorer":
        """The scorer a run's settings ask for (``train.shared_prompt_forward``, ``train.logprob_chunk_size``,
        ``rollout.temperature``; a greedy rollout temperature of 0 scores at 1)."""
        temperature = config.rollout.temperature
        return cls(
            policy, shared_prompt_forward=config.train.shared_prompt_forward,
            chunk_size=config.train.logprob_chunk_size, temperature=temperature if temperature > 0 else 1.0,
        )

    @property
    def config(self):  # what accelerate and DeepSpeed read off the model they prepare
        return self.policy.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, group: torch.Tensor,
        teacher: torch.nn.Module | None = None, jsd_beta: float = 0.5, jsd_temperature: float = 1.0,
    ) -> tuple[torch.Tensor, ...]:
        """``(log-probs, entropies)``, each ``[N, T]`` aligned with ``input_ids``; with a ``teacher``, also
        GKD's generalised JSD to it at every completion position (``ops.token_logprobs_entropy_and_jsd``,
        one pass over the full sequences, the teacher's logits a chunk at a time)."""
        if teacher is not None:
            return token_logprobs_entropy_and_jsd(
                self.policy, teacher, input_ids, attention_mask, loss_mask, beta=jsd_beta,
                jsd_temperature=jsd_temperature, chunk_size=self.chunk_size, temperature=self.temperature,
            )
        if self.shared_prompt_forward:
            return shared_prompt_logprobs_and_entropy(
                self.policy, input_ids, attention_mask, loss_mask, group,
                chunk_size=self.chunk_size, temperature=self.temperature,
            )
        return token_logprobs_and_entropy(
            self.policy, input_ids, attention_mask, chunk_size=self.chunk_size, temperature=self.temperature
        )


def micro_batch_rows(batch: RolloutBatch, size: int, shared_prompt_forward: bool) -> list[list[int]]:
    """Rows of each micro-batch: whole prompt groups for the shared-prompt forward, else by length."""
    if shared_prompt_forward:
        return group_micro_batches(batch.group, batch.sequence_lengths, size)
    return length_sorted_micro_batches(batch.sequence_lengths, size)


@torch.no_grad()
def batch_logprobs(scorer, batch: RolloutBatch, micro_batches: list[list[int]], device) -> torch.Tensor:
    """``[N, T]`` log-probs of every token of ``batch`` under ``scorer`` (old or reference policy), on CPU."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for index in micro_batches:
        micro = batch.select(index).to(device)
        logp, _ = scorer(micro.input_ids, micro.attention_mask, micro.loss_mask, micro.group)
        out[torch.tensor(index)[:, None], torch.arange(logp.shape[1])] = logp.float().cpu()
    return out


@torch.no_grad()
def entropy_sums(scorer, batch: RolloutBatch, micro_batches: list[list[int]], masks: tuple[str, ...], device) -> list[float]:
    """Sum of the token entropies under each named mask of ``batch`` (this process's share)."""
    sums = [0.0] * len(masks)
    for index in micro_batches:
        micro = batch.select(index).to(device)
        _, entropy = scorer(micro.input_ids, micro.attention_mask, micro.loss_mask, micro.group)
        for k, name in enumerate(masks):
            sums[k] += float((entropy * micro.masks[name]).sum())
    return sums
