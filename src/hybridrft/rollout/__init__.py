"""Samplers (rollout generation) and the ``RolloutBatch`` that training consumes."""

from hybridrft.config import VLLMConfig
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
from hybridrft.rollout.vllm import VLLMSampler, vllm_available

SAMPLER_BACKENDS = ("native", "hf", "vllm")


def build_sampler(backend: str, model, tokenizer, *, batch_size: int, vllm: VLLMConfig | None = None,
                  max_model_len: int = 2048) -> Sampler:
    """The sampler named by ``rollout.backend``: ``native`` (shared prompt pass), ``hf`` (``generate``)
    or ``vllm`` (a colocated vLLM engine with the ``rollout.vllm`` settings; it holds no weights until
    its ``load_weights`` is called, and ``max_model_len`` is its default context length)."""
    if backend not in SAMPLER_BACKENDS:
        raise ValueError(f"unknown rollout.backend {backend!r}; choose one of {list(SAMPLER_BACKENDS)}")
    if backend == "vllm":
        return VLLMSampler(model, tokenizer, batch_size=batch_size, settings=vllm, max_model_len=max_model_len)
    return {"native": NativeSampler, "hf": HFSampler}[backend](model, tokenizer, batch_size=batch_size)


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
    "SAMPLER_BACKENDS",
    "VLLMSampler",
    "vllm_available",
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
