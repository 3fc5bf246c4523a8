"""What a teacher costs: the step split and peak memory of the quickstart's shape (SmolLM2-135M, 4 prompts
x 4 rollouts, 64 tokens, one process) without a teacher and with one of the student's size
(docs/BENCHMARKS.md). Runs of 4 steps each, the first step discarded: GRPO; GRPO with the
distillation term (``distill.coef=1``, the teacher's forward its own column); the ``distill`` method;
the ``distill`` method with GKD's JSD (the teacher's pass inside the forward column).

    python bench/distill_cost.py [--teacher PATH] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARM = REPO / "bench" / "out" / "reproduce" / "warm" / "start"
COLUMNS = ("generate", "reward", "teacher", "forward", "backward", "optimizer", "step")
VARIANTS = {
    "grpo": ["method=grpo"],
    "grpo + teacher (distill.coef=1)": ["method=grpo", "distill.coef=1.0"],
    "distill": ["method=distill"],
    "distill, GKD JSD (lmbda=1)": ["method=distill", "distill.loss=jsd", "distill.lmbda=1.0"],
}


def run(name: str, overrides: list[str], teacher: str, threads: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "hybridrft", "train", str(REPO / "recipes" / "quickstart.yaml"),
               *overrides, f"teacher.name_or_path={teacher}", f"train.output_dir={out}", "train.max_steps=4",
               "eval.at_start=false", "eval.size=0", "group.demos_per_prompt=0", f"train.num_threads={threads}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    peak_mib = int(done.stderr.strip().splitlines()[-1]) / 1024
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line][1:]
    split = {c: statistics.median(r.get(f"time/{c}", 0.0) for r in rows) for c in COLUMNS}
    return {"name": name, "peak_mib": peak_mib, **split, "kl": statistics.fmean(r.get("distill/kl", float("nan")) for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(WARM) if WARM.is_dir() else "smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "distill-cost")
    parser.add_argument("--only", default=None, help="comma-separated indices of the runs to make (default: all)")
    args = parser.parse_args()
    print(f"teacher: {args.teacher}; quickstart shape, 4 steps (the first discarded), {args.threads} threads")
    print("| run | " + " | ".join(COLUMNS) + " | peak RSS MiB | KL to teacher |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    chosen = None if args.only is None else {int(k) for k in args.only.split(",")}
    for k, (name, overrides) in enumerate(VARIANTS.items()):
        if chosen is not None and k not in chosen:
            continue
        r = run(name, overrides, args.teacher, args.threads, args.out / f"run{k}")
        kl = "-" if r["kl"] != r["kl"] else f"{r['kl']:.3f}"
        print(f"| {name} | " + " | ".join(f"{r[c]:.2f}" for c in COLUMNS) + f" | {r['peak_mib']:.0f} | {kl} |", flush=True)


if __name__ == "__main__":
    main()
