"""Load policies by name or path (including the embedded default), tokenizers, and save them; LoRA."""

from hybridrft.models.loading import (
    EMBEDDED_MODELS,
    ModelLoadError,
    ModelNotFoundError,
    cache_dir,
    check_model_source,
    check_weights_files,
    clear_quantization_flags,
    load_policy,
    load_tokenizer,
    load_training_policy,
    model_in_folder,
    resolve_model_path,
    save_policy,
)
from hybridrft.models.lora import apply_lora, inference_weights, is_peft_model

__all__ = [
    "EMBEDDED_MODELS",
    "ModelLoadError",
    "ModelNotFoundError",
    "check_model_source",
    "check_weights_files",
    "apply_lora",
    "cache_dir",
    "clear_quantization_flags",
    "inference_weights",
    "is_peft_model",
    "load_policy",
    "load_tokenizer",
    "load_training_policy",
    "model_in_folder",
    "resolve_model_path",
    "save_policy",
]
