"""The optimised paths give the numbers of plain reference computations.

* the shared-prompt forward (each prompt once, completions attending to its keys and values, only
  completion positions projected) against a full forward over every ``prompt + completion`` row,
  with gradients, with and without activation checkpointing;
* the fused vocabulary projection against ``log_softmax`` over materialised logits;
* the native sampler against ``transformers.generate`` (greedy), with prompts of different lengths,
  several samples per prompt, prompts split across generation batches, and rows finishing early so
  that the batch is compacted mid-way;
* the Trainer's step with the shared-prompt forward against the same step without it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama, shared_prompt_batch, tiny_config

from hybridrft.models.kv_cache import allow_checkpointed_cache
from hybridrft.models.loading import enable_activation_checkpointing
from hybridrft.ops import (
    chunked_logprobs_and_entropy,
    logprobs_and_entropy_from_logits,
    shared_prompt_logprobs_and_entropy,
    token_logprobs_and_entropy,
)
from hybridrft.rollout import HFSampler, NativeSampler, SamplingParams, group_micro_batches
from hybridrft.train import Trainer


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_shared_prompt_forward_matches_full_forward(tiny_tokenizer, checkpointing):
    batch = shared_prompt_batch(tiny_tokenizer)
    model = build_tiny_llama(tiny_tokenizer).train()
    if checkpointing:
        enable_activation_checkpointing(model)
    allow_checkpointed_cache(model)
    weights = torch.randn(batch.input_ids.shape)
    mask = batch.loss_mask

    def run(forward):
        model.zero_grad(set_to_none=True)
        logp, entropy = forward()
        ((logp * weights * mask).sum() + (entropy * mask).sum()).backward()
        return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_logp, ref_entropy, ref_grads = run(lambda: token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask))
    logp, entropy, grads = run(
        lambda: shared_prompt_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, mask, batch.group)
    )
    torch.testing.assert_close(logp[mask], ref_logp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy[mask], ref_entropy[mask], atol=1e-5, rtol=1e-5)
    assert not logp[~mask].any() and not entropy[~mask].any()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4)


def test_shared_prompt_forward_rejects_groups_with_different_prompts(tiny_tokenizer):
    batch = shared_prompt_batch(tiny_tokenizer)
    model = build_tiny_llama(tiny_tokenizer)
    with pytest.raises(ValueError, match="same prompt"):
        shared_prompt_logprobs_and_entropy(
            model, batch.input_ids, batch.attention_mask, batch.loss_mask, torch.zeros_like(batch.group)
        )


@pytest.mark.parametrize("terms", ["logp+entropy", "logp", "entropy"])
def test_chunked_projection_matches_full_logits(terms):
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11))
    coeff_logp, coeff_entropy = torch.randn(3, 11), torch.randn(3, 11)

    def run(fn):
        hidden.grad = weight.grad = bias.grad = None
        logp, entropy = fn()
        loss = 0
        if "logp" in terms:
            loss = loss + (logp * coeff_logp).sum()
        if "entropy" in terms:
            loss = loss + (entropy * coeff_entropy).sum()
        loss.backward()
        return logp.detach(), entropy.detach(), hidden.grad.clone(), weight.grad.clone(), bias.grad.clone()

    reference = run(lambda: logprobs_and_entropy_from_logits(hidden @ weight.T + bias, targets))
    chunked = run(lambda: chunked_logprobs_and_entropy(hidden, weight, targets, bias=bias, chunk_size=4, vocab_tile=16))
    for got, want in zip(chunked, reference):
        torch.testing.assert_close(got, want)  # float32 defaults: rtol 1.3e-6, atol 1e-5


def test_group_micro_batches_keep_groups_whole_where_they_fit():
    group = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    lengths = torch.tensor([5, 9, 3, 4, 2, 8, 1, 7, 6, 3])
    batches = group_micro_batches(group, lengths, 4)
    assert sorted(r for b in batches for r in b) == list(range(10))
    assert all(len(b) <= 4 for b in batches)
    # group 2 has 5 rows: split; groups 0 and 1 fit whole, each in one micro-batch
    for g in (0, 1):
        assert sum(any(int(group[r]) == g for r in b) for b in batches) == 1


def _prompts(tokenizer):
    texts = ["Sam has 12 apples. He buys", "What is 2x", "A box holds 6 pens. How many pens are in 4 boxes? 6"]
    return [tokenizer(t).input_ids for t in texts]


def test_fast_paths_hand_the_cache_over_without_deprecated_keywords(tiny_tokenizer):
    """transformers renamed ``past_key_values`` to ``cache`` and will drop the old name; the sampler
    and the shared-prompt forward use whichever name the installed version's forward takes."""
    import warnings

    model = build_tiny_llama(tiny_tokenizer)
    batch = shared_prompt_batch(tiny_tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        NativeSampler(model, tiny_tokenizer).generate(_prompts(tiny_tokenizer), SamplingParams(n=2, max_new_tokens=4))
        shared_prompt_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, batch.loss_mask, batch.group)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


@pytest.mark.parametrize("batch_size", [4, 64], ids=["split-prompts", "one-batch"])
def test_native_greedy_matches_transformers_generate(tiny_tokenizer, batch_size):
    model = build_tiny_llama(tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)
    params = SamplingParams(n=3, temperature=0, max_new_tokens=16)
    reference = HFSampler(model, tiny_tokenizer, batch_size=batch_size).generate(prompts, params)
    native = NativeSampler(model, tiny_tokenizer, batch_size=batch_size).generate(prompts, params)
    assert [c.token_ids for c in native] == [c.token_ids for c in reference]
    assert [c.prompt_index for c in native] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_native_sampler_compacts_finished_rows_without_changing_results(tiny_tokenizer):
    model = build_tiny_llama(tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)
    params = SamplingParams(n=2, temperature=0, max_new_tokens=24)
    plain = HFSampler(model, tiny_tokenizer).generate(prompts, params)
    # make a token that greedy decoding emits mid-way an end-of-sequence token, so rows finish at different steps
    stop = plain[0].token_ids[5]
    reference_sampler, native_sampler = HFSampler(model, tiny_tokenizer), NativeSampler(model, tiny_tokenizer)
    reference_sampler.eos_ids = reference_sampler.eos_ids + [stop]
    native_sampler.eos_ids = native_sampler.eos_ids + [stop]
    reference = reference_sampler.generate(prompts, params)
    native = native_sampler.generate(prompts, params)
    assert [c.token_ids for c in native] == [c.token_ids for c in reference]
    assert [c.finished for c in native] == [c.finished for c in reference]
    assert any(c.finished for c in native) and any(not c.finished for c in native)
    assert all(c.truncated == (not c.finished and len(c.token_ids) == 24) for c in native)


def test_native_sampling_is_seeded_and_top_p_narrows_to_greedy(tiny_tokenizer):
    model = build_tiny_llama(tiny_tokenizer)
    prompts = _prompts(tiny_tokenizer)
    sampler = NativeSampler(model, tiny_tokenizer, batch_size=5)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12)
    first, again = sampler.generate(prompts, params, seed=3), sampler.generate(prompts, params, seed=3)
    other = sampler.generate(prompts, params, seed=4)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]
    narrow = sampler.generate(prompts, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_new_tokens=12), seed=5)
    greedy = sampler.generate(prompts, SamplingParams(n=2, temperature=0, max_new_tokens=12))
    assert [c.token_ids for c in narrow] == [c.token_ids for c in greedy]


@pytest.mark.parametrize("method", ["grpo", "srft"])
def test_trainer_step_is_the_same_with_and_without_shared_prompts(method, tiny_model_dir, tmp_path):
    def gradients(shared: bool):
        trainer = Trainer(tiny_config(
            tiny_model_dir, tmp_path / f"run-{shared}", f"method={method}", f"train.shared_prompt_forward={shared}",
            "rollout.max_new_tokens=8",
        ))
        plan, batch, _ = trainer.collect(1)
        metrics = trainer.compute_gradients(batch, plan)
        return metrics, {n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None}

    shared_metrics, shared = gradients(True)
    plain_metrics, plain = gradients(False)
    assert shared.keys() == plain.keys() and shared
    for name in plain:
        torch.testing.assert_close(shared[name], plain[name], atol=1e-5, rtol=1e-4)
    assert shared_metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-5, abs=1e-6)
