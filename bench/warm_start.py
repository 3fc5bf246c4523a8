"""The shared warmed-up start of the second study (papers' regime): one SFT run on the study's training
split, checkpointed and evaluated on the validation split every ``EVERY`` steps; the checkpoint whose
greedy validation accuracy is closest to ``TARGET`` (inside ``BAND``) becomes the start of every method.

Resumable like ``bench/reproduce.py`` (same data, same folders): the run resumes from its checkpoint,
and the choice is remade from ``metrics.jsonl``.

    nohup python bench/warm_start.py run > bench/out/warm_start.log 2>&1 &
    python bench/warm_start.py choose        # prints the curve and the chosen step; exports the model
    nohup python bench/warm_start.py evaluate > bench/out/warm_eval.log 2>&1 &   # the start, once: greedy, avg@4

``bench/reproduce.py run`` (the warm-start study) does all three first.

First run (2026-12-05, 8 prompts per step, lr 1e-5, greedy validation accuracy by step): 8: 16.4%,
16: 32.8%, 24: 53.1%, 32: 51.6%, 40: 68.0%, 48: 64.8%, 56: 72.7%, 64: 73.4% (the base model: 3.1% on
the ID set). Chosen: step 16. SFT goes on climbing well past the band, so continued SFT is a strong
baseline from this start; demonstration entropy falls from about 1.1 nats at step 3 to 0.06 by step 48.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import (DEFAULT_ROOT, EVAL_TOKENS, MODEL, PROMPTS, SIZES, hybridrft, read_jsonl,  # noqa: E402
                       use_threads, write_data)

STEPS, EVERY = 64, 8
LEARNING_RATE = 1e-5
BAND, TARGET = (0.25, 0.40), 0.32


def recipe(root: Path, out: Path) -> dict:
    return {
        "method": "sft",
        "model": {"name_or_path": MODEL},
        "data": {"source": str(root / "data" / "train.jsonl"), "eval_source": str(root / "data" / "validation.jsonl"),
                 "format": "fields",
                 "fields": {"prompt": "prompt", "answer": "answer", "demonstration": "demonstration", "id": "id"}},
        "group": {"demos_per_prompt": 1},
        "reward": {"functions": ["math"], "weights": [1.0]},
        "eval": {"size": SIZES["validation"], "max_new_tokens": EVAL_TOKENS, "batch_size": 32, "at_start": False,
                 "every": EVERY},
        "train": {"output_dir": str(out), "max_steps": STEPS, "prompts_per_step": 2 * PROMPTS, "micro_batch_size": 8,
                  "learning_rate": LEARNING_RATE, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 2,
                  "max_grad_norm": 1.0, "seed": 0, "save_every": EVERY, "keep_checkpoints": STEPS // EVERY},
    }


def run(root: Path) -> None:
    write_data(root)
    out = root / "warm" / "sft"
    if (out / "final_model").is_dir():
        return
    path = root / "warm" / "sft.yaml"  # beside the run folder: a fresh run needs an empty one
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe(root, out), sort_keys=False))
    resume = ["--resume"] if any((out / "checkpoints").glob("step-*")) else []
    hybridrft("train", str(path), *resume)


def choose(root: Path) -> None:
    out = root / "warm" / "sft"
    curve = {r["step"]: r["eval/accuracy"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"}
    for step, accuracy in sorted(curve.items()):
        print(f"step {step:3d}: validation accuracy {accuracy:.1%}")
    inside = {s: a for s, a in curve.items() if BAND[0] <= a <= BAND[1]}
    if not inside:
        print(f"no evaluated step inside {BAND[0]:.0%}-{BAND[1]:.0%}")
        return
    step = min(inside, key=lambda s: (abs(inside[s] - TARGET), s))
    source = out / "checkpoints" / f"step-{step:06d}" / "model"
    if step == STEPS and not source.is_dir():
        source = out / "final_model"
    target = root / "warm" / "start"
    if not target.is_dir():
        shutil.copytree(source, target)
    (root / "warm" / "start.json").write_text(json.dumps({"step": step, "validation_accuracy": inside[step],
                                                          "curve": curve, "source": str(source)}))
    print(f"chosen: step {step} ({inside[step]:.1%}) -> {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "choose", "evaluate"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    use_threads(args.threads)
    if args.command == "run":
        run(args.root)
    elif args.command == "choose":
        choose(args.root)
    else:  # the start is evaluated once, not once per run, in the study's precision (and float32 for the curves)
        from reproduce import WARM_START, prepare_start

        prepare_start(WARM_START, args.root)


if __name__ == "__main__":
    main()
