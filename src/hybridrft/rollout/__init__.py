"""Samplers (rollout generation) and the ``RolloutBatch`` that training consumes."""

from hybridrft.rollout.assembly import (
    StepSequence,
    assemble_batch,
    demonstration_sequences,
    logged_samples,
    rollout_sequences,
    score_sequences,
)
from hybridrft.rollout.batch import (
    RolloutBatch,
    build_rollout_batch,
    group_micro_batches,
    length_sorted_micro_batches,
    pad_right,
    update_parts,
)
from hybridrft.rollout.native import NativeSampler
from hybridrft.rollout.prompts import PromptSet, encode_prompts, prompt_set
from hybridrft.rollout.sampler import Completion, HFSampler, Sampler, SamplingParams


def build_sampler(backend: str, model, tokenizer, *, batch_size: int) -> Sampler:
    """The sampler named by ``rollout.backend``: ``native`` (shared prompt pass) or ``hf`` (``generate``)."""
    samplers = {"native": NativeSampler, "hf": HFSampler}
    if backend not in samplers:
        raise ValueError(f"unknown rollout.backend {backend!r}; choose one of {sorted(samplers)}")
    return samplers[backend](model, tokenizer, batch_size=batch_size)


__all__ = [
    "Completion",
    "PromptSet",
    "StepSequence",
    "assemble_batch",
    "demonstration_sequences",
    "logged_samples",
    "score_sequences",
    "prompt_set",
    "rollout_sequences",
    "update_parts",
    "HFSampler",
    "NativeSampler",
    "RolloutBatch",
    "Sampler",
    "SamplingParams",
    "build_rollout_batch",
    "build_sampler",
    "encode_prompts",
    "group_micro_batches",
    "length_sorted_micro_batches",
    "pad_right",
]
