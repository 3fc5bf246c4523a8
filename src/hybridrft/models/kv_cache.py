"""Key/value caches that let many completions share one pass over their prompt.

A step's rollouts come in groups: ``n`` completions of the same prompt. Running the prompt once and
letting every completion attend to its keys and values saves ``(n - 1) / n`` of the prompt work, in
sampling and in training alike. These are ``transformers`` cache objects, so any decoder whose
attention calls its cache's ``update`` (Llama, Qwen2, Mistral without sliding windows, ...)
works unchanged:

* ``capture_cache()`` records each layer's keys and values of a prompt pass. It overwrites instead
  of appending, so a layer replayed by activation checkpointing records the same tensors again.
* ``prefix_cache(prefix)`` serves a fixed prefix (one ``[rows, heads, P, d]`` pair per layer) to a
  pass over the completions: each layer attends to ``prefix + new`` and nothing is stored, which
  again makes a replay harmless and keeps the autograd path back into the prompt pass.
* ``decode_cache(prefix, capacity)`` holds keys and values for sampling in buffers allocated once,
  written in place at each step (no per-step concatenation), and drops finished rows on request.

Prompts of different lengths are right-padded to a common length ``P`` and run as one batch; the
rows that continue them carry a 2-D attention mask that hides the padding and position ids that
count from each row's own prompt length, so every token sees exactly its own prompt.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [rows, kv_heads, length, head_dim]


class _CaptureLayer(DynamicLayer):
    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states  # overwrite: safe under checkpoint replay
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class _DecodeLayer(DynamicLayer):
    """Keys and values in a buffer of fixed capacity; ``length`` positions are filled."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        rows, heads, length, dim = keys.shape
        self.key_buffer = keys.new_empty(rows, heads, capacity, dim)
        self.value_buffer = values.new_empty(rows, heads, capacity, dim)
        self.key_buffer[:, :, :length] = keys
        self.value_buffer[:, :, :length] = values
        self.length = length
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"decode cache is full ({self.key_buffer.shape[-2]} positions)")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def select_rows(self, index: torch.Tensor) -> None:
        self.key_buffer = self.key_buffer.index_select(0, index)
        self.value_buffer = self.value_buffer.index_select(0, index)
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward_owner: type) -> str:
    accepted = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in accepted else "past_key_values"


def with_cache(module: torch.nn.Module, cache: Cache) -> dict[str, Cache]:
    """The keyword argument that hands ``cache`` to ``module``'s forward: ``cache`` where the
    installed transformers names it so, ``past_key_values`` (deprecated there) where it does not.
    A PEFT wrapper passes keywords through to its base model, whose forward decides."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return {_cache_keyword(type(base)): cache}


def capture_cache() -> Cache:
    """An empty cache that records the keys and values of one forward pass, per layer."""
    return Cache(layer_class_to_replicate=_CaptureLayer)


def captured(cache: Cache) -> list[LayerKV]:
    """The ``(keys, values)`` a ``capture_cache`` recorded, one pair per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def prefix_cache(prefix: list[LayerKV]) -> Cache:
    """A read-only cache: each layer attends to ``prefix`` followed by the pass's own tokens."""
    return Cache(layers=[_PrefixLayer(k, v) for k, v in prefix])


def decode_cache(prefix: list[LayerKV], capacity: int) -> Cache:
    """A cache for sampling: ``prefix`` copied into buffers of ``capacity`` positions per row."""
    return Cache(layers=[_DecodeLayer(k, v, capacity) for k, v in prefix])


def select_decode_rows(cache: Cache, index: torch.Tensor) -> None:
    """Keep only rows ``index`` of a ``decode_cache`` (for example the unfinished sequences)."""
    for layer in cache.layers:
        layer.select_rows(index)


def expand_prefix(prompts: list[LayerKV], rows_per_prompt: torch.Tensor) -> list[LayerKV]:
    """Per-layer keys and values of a batch of prompts, repeated for the rows that continue each.

    ``prompts`` holds one ``[prompts, heads, P, d]`` pair per layer (a ``capture_cache`` of a
    right-padded prompt pass) and ``rows_per_prompt[i]`` says how many consecutive rows continue
    prompt ``i``. Differentiable: gradients from every row flow back into the prompt pass.
    """
    counts = rows_per_prompt.tolist()  # once, not once per layer
    return [(repeat_rows(k, counts), repeat_rows(v, counts)) for k, v in prompts]


def repeat_rows(x: torch.Tensor, counts: torch.Tensor | list[int]) -> torch.Tensor:
    """``x.repeat_interleave(counts, dim=0)`` with a deterministic backward.

    ``repeat_interleave`` sums its gradient with atomic adds on GPUs, whose order varies from run
    to run; expanding each row and concatenating sums it with an ordinary reduction instead. (On
    GPUs the masked attention that reads the prefix still has an atomic backward; see docs/runs.md.)
    """
    counts = counts.tolist() if isinstance(counts, torch.Tensor) else counts
    return torch.cat([x[i : i + 1].expand(count, *x.shape[1:]) for i, count in enumerate(counts)])


def allow_checkpointed_cache(model: torch.nn.Module) -> None:
    """Let checkpointed decoder layers use the caches above.

    ``transformers`` drops the cache of a checkpointed layer, because its own caches append and a
    replay in backward would append twice. The caches here overwrite or only read, so a replay
    sees the same tensors; this marks the model's layers accordingly.
    """
    for module in model.modules():
        if hasattr(module, "_can_checkpoint_with_cache"):
            module._can_checkpoint_with_cache = True
