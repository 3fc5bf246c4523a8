"""Memory per GPU of a hybridrft run, computed from a model's shape (not measured).

The models are built on the meta device from Qwen2.5-1.5B's and Qwen2.5-7B's published shapes, so
the parameter counts (and LoRA adapter sizes) are exact; the bytes per parameter follow from how
the trainer holds its state:

- full fine-tuning: fp32 master weights (4 B), fp32 gradients (4 B), AdamW's two moments (8 B);
  under DDP every GPU holds all of it, under ZeRO-2 the gradients and moments are split over the
  GPUs, under FSDP2 / ZeRO-3 everything is;
- LoRA: the frozen base in bf16 (2 B), and the adapters with the full-fine-tuning 16 B;
- a frozen model (the reference policy, only with grpo.beta > 0 or train.log_reference_kl; a
  teacher of the policy's size with distill.coef > 0): bf16, whole on every GPU under DDP and
  DeepSpeed; under FSDP2 its decoder layers are split over the GPUs and its embeddings, final norm
  and head stay whole (train/engines.py, ``Engine.prepare_frozen``);
- the KV cache of the sampler: bf16 keys and values for every rollout token of a GPU's share;
- under FSDP2 / ZeRO-3 the sampler gathers the whole weights once per step (bf16 under mixed
  precision), so sampling adds a whole bf16 copy on every GPU for its duration.

Activations of the training forward are left out: with the chunked vocabulary projection they are a
few GB at micro-batch 8 and 1.5k tokens, and gradient checkpointing trades them for compute.

    python bench/memory_estimate.py            # prints the markdown table of docs/scaling.md
"""

from __future__ import annotations

import argparse

import torch

GB = 1e9

SHAPES = {  # Qwen2.5 configs as published (config.json of each model)
    "Qwen2.5-1.5B": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen2.5-7B": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def model_on_meta(shape: dict):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        return Qwen2ForCausalLM(Qwen2Config(**shape))


def lora_parameters(model, rank: int) -> int:
    """Parameters of rank-``rank`` adapters on every target projection: r * (in + out) each."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS
    )


def kv_cache_bytes(shape: dict, tokens: int) -> float:
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * 2 * tokens  # K and V, bf16


def per_gpu(params: int, adapter: int, gpus: int, engine: str, lora: bool) -> float:
    """Bytes of weights, gradients and optimizer state on one GPU."""
    if lora:  # frozen bf16 base (whole under DDP/ZeRO-2, split under FSDP2/ZeRO-3) + fully trained adapters
        base = 2 * params / (gpus if engine == "fsdp2/zero3" else 1)
        return base + 16 * adapter / (1 if engine == "ddp" else gpus)
    if engine == "ddp":
        return 16 * params
    if engine == "zero2":
        return 4 * params + 12 * params / gpus
    return 16 * params / gpus


def table(gpus: int, rollout_tokens: int, lora_rank: int) -> str:
    lines = [
        f"| model | parameters | training | DDP | ZeRO-2 over {gpus} | FSDP2 / ZeRO-3 over {gpus} | + reference or teacher (bf16), whole | + the same, FSDP2 over {gpus} | + KV cache | + whole weights while sampling (FSDP2 / ZeRO-3) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, shape in SHAPES.items():
        model = model_on_meta(shape)
        params = sum(p.numel() for p in model.parameters())
        in_layers = sum(p.numel() for p in model.model.layers.parameters())
        frozen_fsdp2 = 2 * (in_layers / gpus + params - in_layers)
        adapter = lora_parameters(model, lora_rank)
        kv = kv_cache_bytes(shape, rollout_tokens)
        for lora in (False, True):
            label = f"LoRA r={lora_rank} ({adapter / 1e6:.1f}M trained)" if lora else "full"
            cells = [per_gpu(params, adapter, gpus, e, lora) / GB for e in ("ddp", "zero2", "fsdp2/zero3")]
            lines.append(
                f"| {name} | {params / 1e9:.2f}B | {label} | "
                + " | ".join(f"{c:.1f} GB" for c in cells)
                + f" | {2 * params / GB:.1f} GB | {frozen_fsdp2 / GB:.1f} GB | {kv / GB:.1f} GB | {2 * params / GB:.1f} GB |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--rollout-tokens", type=int, default=16 * 8 * 1536,
                        help="prompt + completion tokens sampled at once on one GPU (default: 16 prompts x 8 rollouts x 1536)")
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()
    print(table(args.gpus, args.rollout_tokens, args.lora_rank))


if __name__ == "__main__":
    main()
