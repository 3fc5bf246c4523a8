"""A step's sequences, named: the policy's rollouts and the demonstrations, before they become a batch.

Both kinds enter training the same way, as completions of their prompt; ``StepSequence`` says which
is which and ``assemble_batch`` joins each with its prompt into a ``RolloutBatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridrft.data import Example
from hybridrft.rewards import combine_rewards
from hybridrft.rollout.batch import RolloutBatch, build_rollout_batch
from hybridrft.rollout.sampler import Completion


@dataclass(frozen=True)
class StepSequence:
    group: int  # index of its prompt within this process's prompts of the step
    completion_ids: list[int]
    text: str
    is_demo: bool
    truncated: bool  # a rollout that hit max_new_tokens without EOS (never a demonstration)
    sampler_logprobs: list[float] | None = None  # a rollout's per-token log-probs under the sampler, if recorded
    # a rollout that continues a demonstration prefix: its first prefix_length completion tokens are
    # the prefix (prefix_id -1: none), cut from a demonstration of demo_length tokens
    prefix_id: int = -1
    prefix_length: int = 0
    demo_length: int = 0


def rollout_sequences(completions: list[Completion]) -> list[StepSequence]:
    return [StepSequence(c.prompt_index, c.token_ids, c.text, False, c.truncated, c.logprobs) for c in completions]


def demonstration_sequences(
    tokenizer, examples: list[Example], count: int, *, eos_id: int, max_tokens: int
) -> tuple[list[StepSequence], int]:
    """The first ``count`` demonstrations of each example (cycled if fewer), tokenized, cut at
    ``max_tokens``, and ended with ``eos_id``, the token the sampler stops on, so the policy learns
    to end a demonstration the way its own rollouts end (LUFFY's rollout code appends the EOS the
    same way). Returns the sequences and how many were cut."""
    sequences, truncated = [], 0
    for group, example in enumerate(examples if count > 0 else []):
        if not example.demonstrations:
            raise ValueError(f"example {example.id} has no demonstration but the method trains on demonstrations")
        for j in range(count):
            text = example.demonstrations[j % len(example.demonstrations)]
            tokens = tokenizer(text, add_special_tokens=False).input_ids + [eos_id]
            if len(tokens) > max_tokens:
                tokens, truncated = tokens[:max_tokens], truncated + 1
            sequences.append(StepSequence(group, tokens, text, True, False))
    return sequences, truncated


def assemble_batch(
    prompt_ids: list[list[int]], sequences: list[StepSequence], rewards: list[float], *, pad_id: int,
    with_prefixes: bool = False,
) -> RolloutBatch:
    """One ``RolloutBatch`` of ``sequences`` (in order), each joined with its group's prompt; with
    ``with_prefixes`` (a step that planned prefixes), their prefix fields too."""
    return build_rollout_batch(
        [prompt_ids[s.group] for s in sequences],
        [s.completion_ids for s in sequences],
        is_demo=[s.is_demo for s in sequences],
        group=[s.group for s in sequences],
        reward=rewards,
        truncated=[s.truncated for s in sequences],
        pad_id=pad_id,
        sampler_logprobs=[s.sampler_logprobs for s in sequences],
        prefixes=[(s.prefix_id, s.prefix_length, s.demo_length) for s in sequences] if with_prefixes else None,
    )


def score_sequences(reward_fns, examples: list[Example], sequences: list[StepSequence]) -> tuple[list[float], dict]:
    """Every sequence's combined reward and each function's scores (``rewards.combine_rewards``),
    demonstrations included: a demonstration that does not earn full reward is bad data, counted."""
    return combine_rewards(
        reward_fns,
        [examples[s.group].prompt for s in sequences],
        [s.text for s in sequences],
        [examples[s.group].answer for s in sequences],
    )


def logged_samples(step: int, sequences: list[StepSequence], rewards: list[float], positions: list[int]) -> list[dict]:
    """The step's rollouts as ``samples.jsonl`` rows; a sample's group is its prompt's position in the global batch."""
    return [
        {"step": step, "group": positions[s.group], "reward": r, "text": s.text}
        for s, r in zip(sequences, rewards) if not s.is_demo
    ]
