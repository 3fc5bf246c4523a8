"""Samplers turn prompts into completions. ``HFSampler`` uses ``transformers.generate``."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass
class Completion:
    prompt_index: int
    token_ids: list[int]  # generated tokens, up to and including EOS when one was produced
    text: str  # decoded without special tokens
    finished: bool  # ended with EOS
    truncated: bool  # stopped at max_new_tokens without EOS
    # log-prob of each token under the sampling distribution softmax(logits / temperature), when the
    # sampler records it (NativeSampler, when sampling); None otherwise
    logprobs: list[float] | None = None


class Sampler(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        seed: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[Completion]:
        """``len(prompts) * params.n`` completions, grouped by prompt in order.

        ``seeds`` gives each prompt its own sampling seed, so a prompt's completions do not depend
        on which other prompts share the call or the batch (``seed`` derives them from one number).
        """
        ...


def per_prompt_seeds(count: int, seed: int | None, seeds: list[int] | None) -> list[int] | None:
    """One sampling seed per prompt: ``seeds`` as given, or derived from ``seed`` and the prompt's index."""
    if seeds is not None:
        if len(seeds) != count:
            raise ValueError(f"{len(seeds)} sampling seeds for {count} prompts")
        return list(seeds)
    if seed is None:
        return None
    return [(seed * 1_000_033 + index) % (2**63 - 1) for index in range(count)]


class TokenSampler:
    """What every sampler here shares: the model, its EOS and padding ids, and how token ids become a
    ``Completion`` (cut after the first EOS, decoded, marked finished or truncated)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @contextmanager
    def evaluation_mode(self):
        """The model in eval mode (no dropout) while sampling, restored afterwards."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @property
    def stop_token_id(self) -> int:
        """The EOS a completion ends with: the first of the ids the sampler stops on (the generation
        config's, which for chat models is the end-of-turn token). Demonstrations end with it too."""
        return self.eos_ids[0]

    def completion(
        self, prompt_index: int, token_ids: list[int], max_new_tokens: int, logprobs: list[float] | None = None
    ) -> Completion:
        end = next((k for k, t in enumerate(token_ids) if t in self.eos_ids), None)
        tokens = token_ids if end is None else token_ids[: end + 1]
        return Completion(
            prompt_index=prompt_index,
            token_ids=tokens,
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            finished=end is not None,
            truncated=end is None and len(tokens) >= max_new_tokens,
            logprobs=None if logprobs is None else logprobs[: len(tokens)],
        )


class HFSampler(TokenSampler):
    """Batched sampling with ``model.generate`` on the policy being trained.

    Prompts arrive as token ids; they are left-padded per generation batch. ``generate`` draws from
    the global torch RNG, so with seeds each prompt's samples are generated in their own calls,
    seeded with the prompt's seed (slower than the native sampler, which draws per row).
    """

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        seed: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[Completion]:
        seeds = per_prompt_seeds(len(prompts), seed, seeds)
        sampling = params.temperature > 0
        if sampling and seeds is not None:
            runs = [[(i, params.n)] for i in range(len(prompts))]  # one seeded run per prompt
        else:
            runs = [[(i, params.n) for i in range(len(prompts))]]
        out: list[Completion] = []
        with self.evaluation_mode():
            for run in runs:
                if sampling and seeds is not None:
                    torch.manual_seed(seeds[run[0][0]])
                jobs = [i for i, n in run for _ in range(n)]
                for start in range(0, len(jobs), self.batch_size):
                    chunk = jobs[start : start + self.batch_size]
                    out.extend(self._generate_chunk([prompts[i] for i in chunk], chunk, params))
        return out

    def _generate_chunk(self, prompts: list[list[int]], prompt_index: list[int], params: SamplingParams) -> list[Completion]:
        width = max(len(p) for p in prompts)
        device = next(self.model.parameters()).device
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        greedy = params.temperature <= 0
        sampling = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
        generated = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=not greedy,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            **sampling,
        )[:, width:].cpu()
        return [self.completion(index, row, params.max_new_tokens) for row, index in zip(generated.tolist(), prompt_index)]


def eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config (chat models often list several) plus the tokenizer's."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v is not None and v not in ids:
                ids.append(int(v))
    if not ids:
        raise ValueError("the tokenizer and model define no EOS token; set tokenizer.eos_token")
    return ids
