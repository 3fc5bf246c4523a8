"""How close hybridrft's step comes to what this machine can do, fp32 on CPU.

    .venv/bin/python bench/roofline.py

1. **Matmul peak**: the best sustained fp32 ``torch.mm`` throughput over a few large shapes
   (including the model's own: 4096 rows through its 576x1536 projections).
2. **Training step utilisation (MFU)**: one GRPO optimisation step of hybridrft's Trainer on
   16 sequences x 256 tokens (64-token prompts, 192-token completions; 16 distinct prompts, so the
   shared-prompt forward saves nothing and every token is processed), in one micro-batch by
   default, timed from the first forward to the end of the optimiser step, against the higher of
   the matmul peaks measured before and after the steps. Model FLOPs = forward + backward = 3 x forward, with forward
   = 2 x (non-embedding parameters) per token + 2 x hidden x vocabulary per scored position (the
   head) + 2 x layers x hidden x context per token (causal attention, QK and AV). Recomputation is
   not counted: this is model FLOPs utilisation, not hardware FLOPs utilisation.
3. **Generation**: tokens/s of the native sampler on 4 GSM8K prompts x 4 samples, and the ceiling a
   decode step has on this machine: every step reads all weights once, so at the measured memory
   bandwidth a step cannot take less than ``weight bytes / bandwidth``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def matmul_peak(seconds: float = 2.0) -> dict[str, float]:
    """GFLOP/s of fp32 ``torch.mm`` per shape, sustained over ``seconds`` each."""
    torch.manual_seed(0)
    results = {}
    for m, k, n in [(2048, 2048, 2048), (4096, 576, 1536), (4096, 1536, 576), (4096, 576, 576), (3072, 576, 4096)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
        results[f"{m}x{k}x{n}"] = 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9
    return results


def memory_bandwidth() -> float:
    """GB/s of a large copy (read + write), the bound for reading weights during decoding."""
    src = torch.randn(64 * 2**20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    return 5 * 2 * src.numel() * 4 / (time.perf_counter() - start) / 1e9


def model_flops(config, tokens: int, scored: int, context: int) -> float:
    """Forward + backward FLOPs of ``tokens`` tokens, ``scored`` of them projected to the vocabulary."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = d // heads
    per_layer = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d + 3 * d * config.intermediate_size
    forward = 2 * layers * per_layer * tokens + 2 * d * config.vocab_size * scored
    forward += 2 * layers * d * context * tokens  # causal attention: QK^T and AV over half the context on average
    return 3 * forward


def training_step_mfu(model_name: str, repeats: int, peak: float, workdir: Path, micro_batch: int) -> dict:
    from hybridrft.config import load_config
    from hybridrft.data import Example
    from hybridrft.rollout import build_rollout_batch
    from hybridrft.train import Trainer

    rows, prompt_len, completion_len = 16, 64, 192
    config = load_config(overrides=[
        "method=grpo", f"model.name_or_path={model_name}", "group.num_generations=1", "reward.functions=[math]",
        "reward.weights=[1.0]", f"train.micro_batch_size={micro_batch}", f"train.output_dir={workdir}/mfu",
        "train.overwrite=true", "train.prompts_per_step=16", "eval.size=0", "eval.at_start=false",
    ])
    examples = [Example(id=str(i), prompt=f"problem {i}", demonstrations=[], answer="1") for i in range(rows)]
    trainer = Trainer(config, train_examples=examples, eval_examples=[])
    vocab = trainer.policy.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, vocab, (prompt_len,), generator=generator).tolist() for _ in range(rows)]
    completions = [torch.randint(100, vocab, (completion_len,), generator=generator).tolist() for _ in range(rows)]
    batch = build_rollout_batch(
        prompts, completions, is_demo=[False] * rows, group=list(range(rows)),
        reward=[float(i % 2) for i in range(rows)], truncated=[True] * rows, pad_id=0,
    )
    plan = trainer.objective.plan(1)
    trainer.objective.prepare_batch(batch, plan)
    # a group of one's advantage is its reward (0 for half the rows); give every row a non-zero one
    # so that the backward is real everywhere
    batch.advantage = torch.linspace(-1.0, 1.0, rows)
    times, splits = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        metrics = trainer.compute_gradients(batch, plan)
        metrics.update(trainer.optimizer_update())
        times.append(time.perf_counter() - start)
        splits.append({k: metrics[k] for k in ("time/forward", "time/backward", "time/optimizer")})
    times, splits = times[1:], splits[1:]  # the first step warms up allocator and caches
    step_s = statistics.median(times)
    flops = model_flops(trainer.policy.config, rows * (prompt_len + completion_len), rows * completion_len,
                        prompt_len + completion_len)
    return {
        "rows": rows, "tokens_per_row": prompt_len + completion_len, "micro_batch_size": micro_batch,
        "step_s": step_s, "steps_s": times, "model_tflop": flops / 1e12,
        "achieved_gflops": flops / step_s / 1e9, "mfu": flops / step_s / 1e9 / peak,
        "split_median_s": {k: statistics.median(s[k] for s in splits) for k in splits[0]},
    }


def generation_rate(model_name: str, data: str, bandwidth: float) -> dict:
    from hybridrft.data import load_examples
    from hybridrft.data.chat import render_prompt
    from hybridrft.models import load_policy, load_tokenizer
    from hybridrft.rollout import NativeSampler, SamplingParams

    model, tokenizer = load_policy(model_name), load_tokenizer(model_name)
    prompts = [tokenizer(render_prompt(tokenizer, e), add_special_tokens=False).input_ids for e in load_examples(data, limit=4)]
    sampler = NativeSampler(model, tokenizer, batch_size=16)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=128)
    sampler.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=8), seed=0)  # warm-up
    start = time.perf_counter()
    out = sampler.generate(prompts, params, seed=1)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in out)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor_ms = weight_bytes / (bandwidth / 2 * 1e9) * 1e3  # reads only: half the copy traffic
    return {
        "rows": 16, "max_new_tokens": 128, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
        "weight_mb": weight_bytes / 1e6, "decode_step_floor_ms": floor_ms,
        "tokens_per_s_ceiling_16_rows": 16 / (floor_ms / 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared/data/gsm8k/train.jsonl"))
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps after one warm-up")
    parser.add_argument("--micro-batch", type=int, default=16, help="train.micro_batch_size for the step")
    parser.add_argument("--workdir", default="bench/out/roofline")
    parser.add_argument("--json", help="write the full result here")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    shapes = matmul_peak()
    bandwidth = memory_bandwidth()
    print(f"fp32 matmul: " + ", ".join(f"{k}: {v:.0f}" for k, v in shapes.items()) + " GFLOP/s")
    print(f"copy bandwidth: {bandwidth:.1f} GB/s (read + write); threads: {torch.get_num_threads()}")
    step = training_step_mfu(args.model, args.repeats, max(shapes.values()), workdir, args.micro_batch)
    # this machine's speed drifts by 10-20% over minutes: measure the peak again after the steps and
    # hold the step to the higher of the two, so that drift can only lower the reported utilisation
    after = matmul_peak()
    peak = max(max(shapes.values()), max(after.values()))
    step["mfu"] = step["achieved_gflops"] / peak
    step["mfu_best_step"] = step["model_tflop"] * 1e3 / min(step["steps_s"]) / peak
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (best of {max(shapes.values()):.1f} before and "
          f"{max(after.values()):.1f} after the training steps)")
    print(f"training step, {step['rows']} x {step['tokens_per_row']} tokens, micro-batch {step['micro_batch_size']}: "
          f"median {step['step_s']:.1f} s ({', '.join(f'{s:.1f}' for s in step['steps_s'])}), "
          f"{step['model_tflop']:.2f} TFLOP, {step['achieved_gflops']:.1f} GFLOP/s = MFU {step['mfu']:.1%} of the matmul peak "
          f"(best step {step['mfu_best_step']:.1%})")
    print("  split (median s): " + ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in step["split_median_s"].items()))
    gen = generation_rate(args.model, args.data, bandwidth)
    print(f"generation, 16 rows x <= 128 tokens: {gen['tokens_per_s']:.1f} tokens/s ({gen['tokens']} tokens in "
          f"{gen['seconds']:.1f} s); weight-read floor {gen['decode_step_floor_ms']:.0f} ms/step "
          f"= ceiling {gen['tokens_per_s_ceiling_16_rows']:.0f} tokens/s at 16 rows")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "matmul_gflops": shapes, "matmul_gflops_after": after,
                                               "peak_gflops": peak, "copy_gb_s": bandwidth, "training_step": step,
                                               "generation": gen}, indent=2))

if __name__ == "__main__":
    main()
