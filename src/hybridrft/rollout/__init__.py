"""Samplers (rollout generation) and the ``RolloutBatch`` that training consumes."""

from hybridrft.rollout.batch import RolloutBatch, build_rollout_batch, length_sorted_micro_batches, pad_right
from hybridrft.rollout.prompts import encode_prompts
from hybridrft.rollout.sampler import Completion, HFSampler, Sampler, SamplingParams

__all__ = [
    "Completion",
    "HFSampler",
    "RolloutBatch",
    "Sampler",
    "SamplingParams",
    "build_rollout_batch",
    "encode_prompts",
    "length_sorted_micro_batches",
    "pad_right",
]
