"""LoRA through PEFT: low-rank adapters on the policy's projections, the base weights frozen.

``apply_lora`` wraps a causal LM in a ``peft`` model whose only trainable parameters are the
adapters; everything that drives the policy (the native sampler, the shared-prompt forward, the
key/value caches) reaches the same decoder through the wrapper. An adapter folder is PEFT's own
``save_pretrained`` output (``adapter_config.json`` and ``adapter_model.safetensors``): checkpoints
hold one, and ``merged_state_dict`` gives the full model with the adapters folded into its weights
without touching the model being trained. ``peft`` is imported only when LoRA is used.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA (model.lora.rank > 0) needs peft: pip install 'peft>=0.18.1,<1'") from None
    return peft


def is_peft_model(model) -> bool:
    """Whether ``model`` is a PEFT wrapper (checked without importing peft when it is not loaded)."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def is_adapter_folder(path: str | Path) -> bool:
    """A folder holding a PEFT adapter (``adapter_config.json``) rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def apply_lora(model, lora_config, *, base_name_or_path: str | None = None):
    """``model`` with LoRA adapters on ``lora_config.target_modules`` (rank ``lora_config.rank``,
    scale ``alpha / rank``, ``dropout``), as a PEFT model in which only the adapters require
    gradients; ``model`` itself when ``lora_config.rank`` is 0 or it already is a PEFT model.

    ``base_name_or_path`` is recorded in the adapter's config as the model it adapts (default: the
    model's own ``name_or_path``). The adapters' initial values come from torch's global generator
    (B starts at zero, so the wrapped model computes exactly what ``model`` did).
    """
    if lora_config.rank <= 0 or is_peft_model(model):
        return model
    peft = _peft()
    config = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=lora_config.rank,
        lora_alpha=lora_config.alpha,
        lora_dropout=lora_config.dropout,
        target_modules=list(lora_config.target_modules),
        bias="none",
    )
    try:
        with warnings.catch_warnings():  # PEFT asks transformers 5 for the attribute under its old name
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = peft.get_peft_model(model, config)
    except ValueError as error:  # a target module the model does not have
        raise ValueError(f"model.lora.target_modules={list(lora_config.target_modules)}: {error}") from None
    if base_name_or_path:
        wrapped.peft_config[wrapped.active_adapter].base_model_name_or_path = base_name_or_path
    return wrapped


def check_adapter_matches(folder: Path, lora_config) -> None:
    """Raise ``ValueError`` when the adapter in ``folder`` was made with another rank, scale or set
    of target modules than ``lora_config`` (its weights would not fit the model built from it)."""
    saved = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    targets = saved.get("target_modules") or []
    ours = {
        "r": lora_config.rank,
        "lora_alpha": float(lora_config.alpha),
        "target_modules": sorted(lora_config.target_modules),
    }
    theirs = {
        "r": saved.get("r"),
        "lora_alpha": float(saved.get("lora_alpha", 0)),
        "target_modules": sorted([targets] if isinstance(targets, str) else targets),
    }
    if ours != theirs:
        raise ValueError(
            f"the adapter in {folder} has rank {theirs['r']}, alpha {theirs['lora_alpha']}, targets "
            f"{theirs['target_modules']}, but model.lora asks for rank {ours['r']}, alpha {ours['lora_alpha']}, "
            f"targets {ours['target_modules']}; resume with the run's own model.lora settings"
        )


def load_adapter_weights(model, folder: str | Path) -> None:
    """Copy the adapter weights saved in ``folder`` into the PEFT model ``model`` (exact values).

    Every adapter tensor of the model must be in the file and every tensor of the file must land in
    the model; anything else is an error rather than a silently half-loaded adapter.
    """
    from safetensors.torch import load_file

    peft = _peft()
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no adapter weights ({ADAPTER_WEIGHTS}) in {folder}")
    state = load_file(path, device=str(next(model.parameters()).device))
    result = peft.set_peft_model_state_dict(model, state, adapter_name=model.active_adapter)
    expected = set(peft.get_peft_model_state_dict(model, adapter_name=model.active_adapter))
    missing = sorted(expected - set(state))
    if result.unexpected_keys or missing:
        raise ValueError(
            f"the adapter in {folder} does not fit the model: "
            f"{len(missing)} adapter tensors missing (e.g. {missing[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {list(result.unexpected_keys)[:2]})"
        )


def merge_adapter_folder(base, folder: str | Path):
    """``base`` (a plain causal LM, changed in place) with the adapter saved in ``folder`` merged
    into its weights: a plain transformers model again."""
    return _peft().PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def save_adapter(model, path: str | Path) -> None:
    """PEFT's ``save_pretrained`` of the adapter alone (config, safetensors weights, model card).

    The base model's embedding matrix is never added: ``save_embedding_layers="auto"`` would ask the
    hub whether the vocabulary was resized, and the adapters here never resize it.
    """
    model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict of the base model with every adapter folded into its weight, under the base
    model's own names (what ``save_pretrained`` of the merged model would write).

    The model is not changed: each merged weight is a new tensor (``W + scale * B A``, computed as
    PEFT's merge computes it), built one layer at a time, so the extra memory is that of the merged
    weights, not of a second model. A model with anything else than plain LoRA on linear layers
    (DoRA and other variants, LoRA on biases or embeddings, other PEFT methods or wrappers) is
    merged by PEFT itself, on a copy of the whole model.
    """
    lora = _peft().tuners.lora
    base = model.get_base_model()
    adapter = model.active_adapter
    layers = {name: m for name, m in base.named_modules() if type(m).__module__.startswith("peft.")}
    plain = all(
        type(m) is lora.Linear
        and not m.merged
        and not getattr(m, "lora_variant", {}).get(adapter)  # DoRA and other variants merge otherwise
        and not getattr(m, "lora_bias", {}).get(adapter)
        for m in layers.values()
    )
    if not plain:
        return copy.deepcopy(model).merge_and_unload().state_dict()
    state = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue  # the adapters themselves
        state[key.replace(".base_layer.", ".")] = tensor
    for name, layer in layers.items():
        weight = layer.get_base_layer().weight
        state[f"{name}.weight"] = (weight + layer.get_delta_weight(adapter)).to(weight.dtype)  # as PEFT's merge rounds
    return state


def inference_weights(model) -> dict[str, torch.Tensor]:
    """The weights an inference engine (the vLLM sampler) loads for ``model``, under the base model's
    names: its state dict, or under LoRA the merged weights (``merged_state_dict``)."""
    return merged_state_dict(model) if is_peft_model(model) else model.state_dict()
