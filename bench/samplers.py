"""The three samplers on identical prompts, then a whole GRPO step with each, on SmolLM2 on this CPU.

    .venv/bin/python bench/samplers.py                       # native, hf and vllm; SmolLM2-135M-Instruct
    .venv/bin/python bench/samplers.py --backends native,vllm --prompts 4 --rollouts 8 --max-new-tokens 128

Sampling: every backend samples the same prompts of the built-in arithmetic task (``--rollouts``
samples each, temperature 1, seeded per prompt, ``--max-new-tokens`` budget), once as warm-up and
then ``--repeats`` times; reported: generated tokens per second, seconds per call, and the worker's
peak resident memory (the policy in fp32, plus the engine for vllm, whose build time is reported
too). The samples differ between backends (each draws its own random numbers), so their lengths
differ: tokens per second is the comparable number.

Step: ``--steps`` GRPO steps of the quickstart's shape (``--prompts`` prompts x ``--rollouts``
rollouts) with each backend, the first discarded as warm-up; reported: seconds per step and its
split (weight sync, generation, reward, training) from the run's ``metrics.jsonl``, and peak memory.
Each measurement runs in its own process, one after the other. vLLM needs ``bash scripts/setup.sh
--vllm`` (the CPU build).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import MARK, emit, peak_rss_mib  # noqa: E402  (bench/ scripts share the worker protocol)

ROOT = Path(__file__).resolve().parents[1]


def quickstart_config(args, *overrides: str):
    from hybridrft.config import load_config

    return load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"rollout.max_new_tokens={args.max_new_tokens}", f"group.num_generations={args.rollouts}",
        f"train.prompts_per_step={args.prompts}", f"train.num_threads={args.threads}", *overrides,
    ])


def sample_worker(args) -> None:
    import torch

    from hybridrft.data import load_run_examples
    from hybridrft.models import inference_weights, load_policy, load_tokenizer
    from hybridrft.rollout import SamplingParams, VLLMSampler, build_sampler, prompt_set

    config = quickstart_config(args)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(config.model.name_or_path)
    policy = load_policy(config.model.name_or_path).eval()
    examples, _ = load_run_examples(config)
    prompts = prompt_set(tokenizer, examples[: args.prompts], config.data, "bench prompts").prompt_ids
    start = time.perf_counter()
    sampler = build_sampler(args.backend, policy, tokenizer, batch_size=args.prompts * args.rollouts,
                            vllm=config.rollout.vllm, max_model_len=512)
    if isinstance(sampler, VLLMSampler):
        sampler.load_weights(inference_weights(policy).items())
    build = time.perf_counter() - start
    params = SamplingParams(args.rollouts, 1.0, 1.0, args.max_new_tokens)
    seeds = list(range(len(prompts)))
    sampler.generate(prompts, params, seeds=seeds)  # warm-up
    calls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        completions = sampler.generate(prompts, params, seeds=seeds)
        calls.append((time.perf_counter() - start, sum(len(c.token_ids) for c in completions)))
    emit({"build_s": build, "calls": calls, "peak_rss_mib": peak_rss_mib()})


def step_worker(args) -> None:
    from hybridrft.train import Trainer, read_metrics

    with tempfile.TemporaryDirectory() as out:
        config = quickstart_config(
            args, "method=grpo", f"rollout.backend={args.backend}", f"train.max_steps={args.steps}",
            f"train.output_dir={out}", "eval.at_start=false", "eval.size=0", "train.learning_rate=1e-5",
        )
        Trainer(config).train()
        rows = [r for r in read_metrics(Path(out) / "metrics.jsonl") if r.get("plan")]
    emit({"steps": rows[1:], "peak_rss_mib": peak_rss_mib()})


def run_worker(kind: str, backend: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--backend", backend, *args.passthrough]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise SystemExit(f"{kind} worker for {backend} failed:\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="native,hf,vllm")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-steps", action="store_true", help="measure sampling only")
    parser.add_argument("--worker", choices=["sample", "step"], help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        {"sample": sample_worker, "step": step_worker}[args.worker](args)
        return
    args.passthrough = [f"--prompts={args.prompts}", f"--rollouts={args.rollouts}", f"--max-new-tokens={args.max_new_tokens}",
                        f"--repeats={args.repeats}", f"--steps={args.steps}", f"--threads={args.threads}"]
    backends = args.backends.split(",")
    print(f"sampling: {args.prompts} prompts x {args.rollouts} samples, up to {args.max_new_tokens} new tokens, "
          f"temperature 1, {args.threads} threads; {args.repeats} timed calls after a warm-up\n")
    print("| sampler | generated tokens/s | s per call | tokens per call | peak RSS MiB | build s |")
    print("|---|---|---|---|---|---|")
    for backend in backends:
        r = run_worker("sample", backend, args)
        seconds = [s for s, _ in r["calls"]]
        tokens = [t for _, t in r["calls"]]
        print(f"| {backend} | {sum(tokens) / sum(seconds):.0f} | {statistics.mean(seconds):.2f} | "
              f"{statistics.mean(tokens):.0f} | {r['peak_rss_mib']:.0f} | {r['build_s']:.1f} |", flush=True)
    if args.skip_steps:
        return
    print(f"\nGRPO step: {args.prompts} prompts x {args.rollouts} rollouts, {args.steps} steps, the first discarded\n")
    print("| sampler | s per step | weight sync | generate | reward | train | generated tokens/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for backend in backends:
        r = run_worker("step", backend, args)

        def mean(key: str) -> float:
            return statistics.mean(row.get(key, 0.0) for row in r["steps"])

        print(f"| {backend} | {mean('time/step'):.2f} | {mean('time/weight_sync'):.2f} | {mean('time/generate'):.2f} | "
              f"{mean('time/reward'):.2f} | {mean('time/train'):.2f} | {mean('throughput/generated_tokens_per_s'):.0f} | "
              f"{r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
