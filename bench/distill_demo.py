"""On-policy distillation on CPU: the base SmolLM2 learns from a stronger checkpoint of the same size, next to
GRPO and SFT at equal budget (docs/RESULTS.md, "Distillation").

The task is the reproduction study's arithmetic data (bench/reproduce.py): training split, and the first 64
problems of its in-distribution held-out set, which neither the teacher nor the student ever trained on.
The teacher is the study's warm-start SFT run at its end (bench/warm_start.py: 64 steps, 73% on the
validation split). Every run: 16 steps of 4 prompts, 4 rollouts per prompt (SFT: 1 demonstration per
prompt), lr 1e-5, held-out accuracy at steps 0, 8 and 16; the distillation run logs its KL to the teacher.

    python bench/distill_demo.py [--threads 1]        # resumable: finished runs are skipped
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "bench" / "out" / "reproduce"
TEACHER = ROOT / "warm" / "sft" / "final_model"
METHODS = ("sft", "grpo", "distill")


def recipe(method: str, out: Path) -> dict:
    return {
        "method": method,
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "teacher": {"name_or_path": str(TEACHER) if method == "distill" else None},
        "data": {"source": str(ROOT / "data" / "train.jsonl"), "eval_source": str(ROOT / "data" / "id.jsonl"),
                 "format": "fields", "fields": {"prompt": "prompt", "answer": "answer", "demonstration": "demonstration", "id": "id"}},
        "rollout": {"temperature": 1.0, "max_new_tokens": 96, "generation_batch_size": 32},
        "group": {"num_generations": 4, "demos_per_prompt": 1 if method == "sft" else 0},
        "reward": {"functions": ["math"], "weights": [1.0]},
        "eval": {"size": 64, "max_new_tokens": 128, "batch_size": 32, "at_start": True, "every": 8},
        "train": {"output_dir": str(out), "max_steps": 16, "prompts_per_step": 4, "micro_batch_size": 10,
                  "learning_rate": 1e-5, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 2,
                  "max_grad_norm": 1.0, "seed": 0, "save_every": 4, "keep_checkpoints": 1},
    }


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = [f"train.num_threads={args.threads}"] if args.threads else []
    for method in METHODS:
        out = ROOT / "distill-demo" / method
        if (out / "final_model").is_dir():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        path = out.parent / f"{method}.yaml"  # beside the run folder: a fresh run needs an empty one
        path.write_text(yaml.safe_dump(recipe(method, out), sort_keys=False))
        resume = ["--resume"] if any((out / "checkpoints").glob("step-*")) else []
        subprocess.run([sys.executable, "-m", "hybridrft", "train", str(path), *threads, *resume], check=True, cwd=REPO)
    print("\n".join(table()))


def table() -> list[str]:
    """The demonstration's table (docs/RESULTS.md, "Distillation"), from the runs' metrics."""
    lines = ["| method | held-out accuracy, steps 0 / 8 / 16 (%) | KL to the teacher per rollout, steps 1-4 / 13-16 "
             "| per token | rollout length | train time |", "|---|---|---|---|---|---|"]
    for method in METHODS:
        found = rows(ROOT / "distill-demo" / method)
        if not (ROOT / "distill-demo" / method / "final_model").is_dir():
            lines.append(f"| {method} | (not run yet) | | | | |")
            continue
        evals = [f"{r['eval/accuracy'] * 100:.1f}" for r in found if r.get("kind") == "eval"]
        train = [r for r in found if r.get("kind") == "train"]
        first, last = train[:4], train[-4:]
        mean = lambda rs, f: sum(f(r) for r in rs) / len(rs)  # noqa: E731
        # per rollout: the token mean times the mean rollout length (= the sum over a rollout's tokens, averaged)
        per_rollout = lambda r: r["distill/kl"] * r["length/response_mean"]  # noqa: E731
        if "distill/kl" in train[0]:
            kl_cells = (f"{mean(first, per_rollout):.1f} / {mean(last, per_rollout):.1f} | "
                        f"{mean(first, lambda r: r['distill/kl']):.3f} / {mean(last, lambda r: r['distill/kl']):.3f}")
        else:
            kl_cells = "- | -"
        length = (f"{mean(first, lambda r: r['length/response_mean']):.0f} / {mean(last, lambda r: r['length/response_mean']):.0f}"
                  if "length/response_mean" in train[0] else "-")  # SFT samples nothing
        seconds = sum(r.get("time/step", 0.0) for r in train)
        lines.append(f"| {method} | {' / '.join(evals)} | {kl_cells} | {length} | {seconds / 60:.1f} min |")
    return lines

if __name__ == "__main__":
    main()
