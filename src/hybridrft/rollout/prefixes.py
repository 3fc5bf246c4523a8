"""Rollouts that continue a prefix of a demonstration (Prefix-RFT), on any sampler.

The sampler is given ``prompt + prefix`` as token ids, the demonstration's own tokens as the
demonstrations are trained (never re-tokenised text), so the sequence trained on is exactly the one
sampled: ``prefix tokens + the policy's continuation``. The reference builds the same context as text
with the chat template's ``continue_final_message`` (``rl_dataset.py``); here the prompt's tokens
already end where the assistant turn starts, and the prefix follows as tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    """Every prompt's slots sampled (``params.n`` continuations per slot), as step sequences grouped by
    prompt: the completion is ``prefix + continuation``, the two sharing the budget
    ``params.max_new_tokens`` (the reference cuts them together to its response budget), so a slot's
    continuation may take ``max_new_tokens - len(prefix)`` tokens. Slots are sampled in one call per
    distinct continuation budget; each slot's seed is its own, so its continuations do not depend on
    which slots share a call. A prefix leaves the continuation at least one token. The text is decoded
    from the completion's tokens, and the sampler's log-probs of the prefix tokens, which it did not
    draw, are 0 (``RolloutBatch.prefix_mask`` marks them)."""
    contexts, owners = [], []
    for group, (prompt, demos, prompt_slots) in enumerate(zip(prompt_ids, demo_ids, slots)):
        for k, slot in enumerate(prompt_slots):
            prefix = demos[slot.demo][: min(slot.length, params.max_new_tokens - 1)] if slot.length else []
            contexts.append(list(prompt) + prefix)
            owners.append((group, k, prefix, len(demos[slot.demo]) if demos else 0))
    slot_seeds = None if seeds is None else [slot_seed(seeds[group], k) for group, k, *_ in owners]
    budgets = [params.max_new_tokens - len(prefix) for _, _, prefix, _ in owners]
    found: dict[int, list] = {}
    for budget in sorted(set(budgets), reverse=True):
        members = [c for c, b in enumerate(budgets) if b == budget]
        part = sampler.generate([contexts[c] for c in members], replace(params, max_new_tokens=budget),
                                seeds=None if slot_seeds is None else [slot_seeds[c] for c in members])
        for completion in part:
            found.setdefault(members[completion.prompt_index], []).append(completion)
    sequences = []
    for c, (group, k, prefix, demo_length) in enumerate(owners):
        for completion in found.get(c, []):
            tokens = prefix + completion.token_ids
            logprobs = None if completion.logprobs is None else [0.0] * len(prefix) + list(completion.logprobs)
            sequences.append(StepSequence(
                group=group, completion_ids=tokens, text=tokenizer.decode(tokens, skip_special_tokens=True),
                is_demo=False, truncated=completion.truncated, sampler_logprobs=logprobs,
                prefix_id=k if prefix else -1, prefix_length=len(prefix), demo_length=demo_length,
            ))
    return sequences
