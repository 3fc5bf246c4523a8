"""Pure tensor functions: log-probs and entropies, advantages, loss terms, aggregation.

No I/O, no globals, no knowledge of models beyond the Hugging Face module interface used by
``token_logprobs_and_entropy`` and ``shared_prompt_logprobs_and_entropy``.
"""

from hybridrft.ops.advantages import ADVANTAGE_SCALES, group_advantages
from hybridrft.ops.aggregation import AGGREGATIONS, MaskTotals, aggregate, zero_outside
from hybridrft.ops.entropy_weights import (
    ENTROPY_GRANULARITIES,
    entropy_for_weights,
    entropy_weight,
    masked_sequence_mean,
)
from hybridrft.ops.logprobs import (
    chunked_logprobs_and_entropy,
    logprobs_and_entropy_from_logits,
    shared_prompt_logprobs_and_entropy,
    token_logprobs_and_entropy,
    token_logprobs_entropy_and_jsd,
)
from hybridrft.ops.policy_loss import (
    LOG_RATIO_BOUND,
    clipped_surrogate,
    k3_kl,
    policy_ratio,
    shaped_probability,
    uncertainty_weights,
)
from hybridrft.ops.rollout_correction import rollout_importance_weights, sampler_mismatch
from hybridrft.ops.schedules import warmup_cosine

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "ENTROPY_GRANULARITIES",
    "LOG_RATIO_BOUND",
    "MaskTotals",
    "aggregate",
    "chunked_logprobs_and_entropy",
    "clipped_surrogate",
    "shared_prompt_logprobs_and_entropy",
    "entropy_for_weights",
    "entropy_weight",
    "group_advantages",
    "k3_kl",
    "logprobs_and_entropy_from_logits",
    "masked_sequence_mean",
    "policy_ratio",
    "rollout_importance_weights",
    "sampler_mismatch",
    "shaped_probability",
    "token_logprobs_and_entropy",
    "token_logprobs_entropy_and_jsd",
    "uncertainty_weights",
    "warmup_cosine",
    "zero_outside",
]
