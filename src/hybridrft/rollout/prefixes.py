"""Rollouts that continue a prefix of a demonstration (Prefix-RFT), on any sampler.

The sampler is given ``prompt + prefix`` as token ids, the demonstration's own tokens as the
demonstrations are trained (never re-tokenised text), so the sequence trained on is exactly the one
sampled: ``prefix tokens + the policy's continuation``. The reference builds the same context as text
with the chat template's ``continue_final_message`` (``rl_dataset.py``); here the prompt's tokens
already end where the assistant turn starts, and the prefix follows as tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrft.rollout.assembly import StepSequence
from hybridrft.rollout.sampler import Sampler, SamplingParams


@dataclass(frozen=True)
class RolloutPrefix:
    """One slot of a prompt's rollouts: ``rollouts`` continuations of the first ``length`` tokens of
    the prompt's demonstration ``demo`` (``length`` 0: an ordinary rollout, from the prompt alone).
    ``fraction``, ``low`` and ``high`` are the drawn prefix fraction and its controller's bounds (logged)."""

    demo: int
    length: int
    fraction: float = 0.0
    low: float = 0.0
    high: float = 0.0


def slot_seed(prompt_seed: int, slot: int) -> int:
    """The sampling seed of a prompt's ``slot``-th prefix slot, from the prompt's seed: the same
    continuations on any process count, as every prompt's own seed gives."""
    return (prompt_seed * 1_000_003 + 7919 * (slot + 1)) % (2**63 - 1)


def sample_prefix_continuations(
    sampler: Sampler,
    tokenizer,
    prompt_ids: list[list[int]],
    demo_ids: list[list[list[int]]],
    slots: list[list[RolloutPrefix]],
    params: SamplingParams,
    seeds: list[int] | None,
) -> list[StepSequence]:
    """Every prompt's slots sampled in one sampler call (``params.n`` continuations per slot), as step
    sequences grouped by prompt: the completion is ``prefix + continuation`` cut at
    ``params.max_new_tokens`` (the reference cuts prefix and continuation together to the response
    budget), the text is decoded from those tokens, and the sampler's log-probs of the prefix tokens,
    which it did not draw, are 0 (``RolloutBatch.prefix_mask`` marks them). A prefix is cut to leave the
    continuation at least one token of the budget."""
    contexts, owners = [], []
    for group, (prompt, demos, prompt_slots) in enumerate(zip(prompt_ids, demo_ids, slots)):
        for k, slot in enumerate(prompt_slots):
            # a prefix leaves the policy at least one token of the budget (prefix and continuation share it)
            prefix = demos[slot.demo][: min(slot.length, params.max_new_tokens - 1)] if slot.length else []
            contexts.append(list(prompt) + prefix)
            owners.append((group, k, slot, prefix, len(demos[slot.demo]) if demos else 0))
    slot_seeds = None if seeds is None else [slot_seed(seeds[group], k) for group, k, *_ in owners]
    completions = sampler.generate(contexts, params, seeds=slot_seeds) if contexts else []
    sequences = []
    for completion in completions:
        group, k, slot, prefix, demo_length = owners[completion.prompt_index]
        tokens = (prefix + completion.token_ids)[: params.max_new_tokens]
        cut = len(tokens) < len(prefix) + len(completion.token_ids)
        logprobs = None
        if completion.logprobs is not None:
            logprobs = ([0.0] * len(prefix) + list(completion.logprobs))[: len(tokens)]
        sequences.append(StepSequence(
            group=group, completion_ids=tokens, text=tokenizer.decode(tokens, skip_special_tokens=True),
            is_demo=False, truncated=completion.truncated or cut,  # a cut drops the EOS with the tail
            sampler_logprobs=logprobs, prefix_id=k if prefix else -1, prefix_length=len(prefix),
            demo_length=demo_length,
        ))
    return sequences
