"""HFSampler and RolloutBatch on a tiny random Llama."""

from __future__ import annotations

import torch

from conftest import build_tiny_llama
from hybridrft.data import Example
from hybridrft.rollout import HFSampler, SamplingParams, build_rollout_batch, encode_prompts, length_sorted_micro_batches


def prompts_for(tokenizer, texts):
    examples = [Example(id=str(i), prompt=t, demonstrations=[], answer="0") for i, t in enumerate(texts)]
    _, ids = encode_prompts(tokenizer, examples, system_prompt=None, answer_instruction=None, max_prompt_tokens=512)
    return ids


def test_sampler_returns_n_completions_per_prompt_with_truncation_flags(tiny_tokenizer):
    model = build_tiny_llama(tiny_tokenizer)
    sampler = HFSampler(model, tiny_tokenizer, batch_size=4)
    prompts = prompts_for(tiny_tokenizer, ["What is 2 + 3?", "Sam has 12 apples. He buys 7 more. How many now?"])
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=5)
    out = sampler.generate(prompts, params, seed=7)
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    for c in out:
        assert 1 <= len(c.token_ids) <= 5
        assert c.truncated == (not c.finished and len(c.token_ids) == 5)
        assert c.text == tiny_tokenizer.decode(c.token_ids, skip_special_tokens=True)
    again = sampler.generate(prompts, params, seed=7)
    assert [c.token_ids for c in again] == [c.token_ids for c in out]  # seeded: reproducible
    assert model.training  # the sampler restores the training mode it found


def test_greedy_is_deterministic_across_samples(tiny_tokenizer):
    sampler = HFSampler(build_tiny_llama(tiny_tokenizer), tiny_tokenizer)
    prompts = prompts_for(tiny_tokenizer, ["What is 2 + 3?"])
    out = sampler.generate(prompts, SamplingParams(n=2, temperature=0.0, max_new_tokens=6))
    assert out[0].token_ids == out[1].token_ids


def test_eos_ends_a_completion(tiny_tokenizer):
    """Teach the tiny model to answer with EOS at once, then check the sampler stops and flags it."""
    from hybridrft.ops import token_logprobs_and_entropy

    model = build_tiny_llama(tiny_tokenizer)
    prompt = prompts_for(tiny_tokenizer, ["What is 2 + 3?"])[0]
    eos = tiny_tokenizer.eos_token_id
    ids = torch.tensor([prompt + [eos]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        logp, _ = token_logprobs_and_entropy(model, ids, torch.ones_like(ids))
        loss = -logp[0, -1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = HFSampler(model, tiny_tokenizer).generate([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=8))[0]
    assert out.token_ids == [eos] and out.finished and not out.truncated and out.text == ""


def test_rollout_batch_masks_completion_tokens_only():
    batch = build_rollout_batch(
        [[5, 6, 7], [5, 6]],
        [[8, 9], [10, 11, 12]],
        is_demo=[False, True],
        group=[0, 0],
        reward=[1.0, 0.0],
        truncated=[False, False],
        pad_id=0,
    )
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 10, 11, 12]]
    assert batch.loss_mask.tolist() == [[False, False, False, True, True], [False, False, True, True, True]]
    assert batch.completion_lengths.tolist() == [2, 3]
    short = build_rollout_batch([[1]], [[2]], is_demo=[False], group=[0], reward=[0.0], truncated=[True], pad_id=0)
    assert short.input_ids.shape == (1, 2)
    # select trims the padding columns of a shorter sub-batch
    padded = build_rollout_batch([[1, 2, 3, 4]], [[5]], is_demo=[False], group=[0], reward=[0.0], truncated=[False], pad_id=0)
    assert padded.select([0]).input_ids.shape == (1, 5)


def test_micro_batches_group_similar_lengths():
    lengths = torch.tensor([3, 10, 4, 9, 5])
    assert length_sorted_micro_batches(lengths, 2) == [[1, 3], [4, 2], [0]]
