"""A small-scale reproduction: do SRFT and SASR beat their baselines here, at equal budget?

Every method trains the embedded SmolLM2-135M-Instruct on the built-in arithmetic task with the
same prompts, chat rendering, reward, sampling, group sizes and number of steps; each method's own
hyperparameters are its defaults (docs/methods.md), its learning rate the best of a short sweep on
a validation split. Evaluation: greedy accuracy and avg@4 at temperature 0.6 on an in-distribution
held-out set and on an out-of-distribution set of harder problems, neither ever trained on.

The study is a sum of resumable pieces: each piece (a sweep run, a training run, an evaluation)
lives in its own folder under ``--root`` and is skipped once finished; a killed training run
resumes from its last checkpoint. ``results`` rebuilds docs/RESULTS.md from the folders. The
whole study took about 5.4 h of wall-clock on 2 cores, mostly as two one-thread jobs side by side;
evaluation is about two thirds of it (docs/RESULTS.md, "Cost").

    python bench/reproduce.py plan                          # what is done, what remains
    nohup python bench/reproduce.py run > bench/out/reproduce.log 2>&1 &
    python bench/reproduce.py run --methods srft,sasr --seeds 0,1
    python bench/reproduce.py run --threads 1 --methods sft,grpo &   # two jobs share two cores
    python bench/reproduce.py run --threads 1 --methods srft,sasr &
    python bench/reproduce.py results                       # docs/RESULTS.md and docs/results/*.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "bench" / "out" / "reproduce"

# ---------------------------------------------------------------- the study's settings

MODEL = "smollm2-135m-instruct"
DATA_SEED = 1234
SIZES = {"train": 2000, "validation": 128, "id": 256, "ood": 256}
ID_STEPS, OOD_STEPS = (1, 2), (3, 4)  # operations per problem
OOD_NUMBERS = dict(max_operand=60, max_factor=9, max_value=300)  # in distribution: 20, 9, 100

STEPS = 16  # training steps of every method (and so STEPS x PROMPTS prompts seen)
PROMPTS, ROLLOUTS, DEMOS = 4, 4, 1  # per step; per prompt; per prompt
ROLLOUT_TOKENS, EVAL_TOKENS = 96, 128
CURVE_EVERY, CURVE_SIZE = 8, 64  # held-out accuracy during training: the first 64 ID problems
SWEEP_STEPS = 8
SWEEP_RATES = (1e-5, 3e-5, 1e-4)
AVG_SAMPLES, AVG_TEMPERATURE = 4, 0.6

SEEDED = ("sft", "grpo", "two_stage", "luffy", "srft", "sasr")  # 3 seeds each
SINGLE = ("static_mix", "chord", "hpt")  # 1 seed each
METHODS = SEEDED + SINGLE
SEEDS = (0, 1, 2)
LABELS = {"sft": "SFT", "grpo": "GRPO", "two_stage": "SFT then GRPO", "luffy": "LUFFY", "srft": "SRFT",
          "sasr": "SASR", "static_mix": "static mix", "chord": "CHORD", "hpt": "HPT"}


def scaled(method: str, steps: int) -> dict:
    """Budgets that a method's defaults state in steps of a long run, scaled to a run of ``steps``
    (the sweep's shorter runs included, so that they exercise every phase too)."""
    return {
        "two_stage": {"two_stage": {"sft_steps": steps // 2}},
        "sasr": {"sasr": {"warmup_steps": max(1, steps // 5)}},
        "chord": {"chord": {"mu_warmup_steps": max(1, steps // 5), "mu_decay_steps": steps // 2}},
    }.get(method, {})


def method_recipe(method: str, root: Path, out: Path, *, seed: int, learning_rate: float, steps: int,
                  curve: bool) -> dict:
    recipe = {
        "method": method,
        "model": {"name_or_path": MODEL},
        "data": {
            "source": str(root / "data" / "train.jsonl"),
            "eval_source": str(root / "data" / ("id.jsonl" if curve else "validation.jsonl")),
            "format": "fields",
            "fields": {"prompt": "prompt", "answer": "answer", "demonstration": "demonstration", "id": "id"},
        },
        "rollout": {"temperature": 1.0, "max_new_tokens": ROLLOUT_TOKENS, "generation_batch_size": 32},
        "group": {"num_generations": ROLLOUTS, "demos_per_prompt": DEMOS},
        "reward": {"functions": ["math"], "weights": [1.0]},
        "eval": {"size": CURVE_SIZE if curve else SIZES["validation"], "max_new_tokens": EVAL_TOKENS,
                 "batch_size": 32, "at_start": curve, "every": CURVE_EVERY if curve else 0},
        "train": {"output_dir": str(out), "max_steps": steps, "prompts_per_step": PROMPTS, "micro_batch_size": 10,
                  "learning_rate": learning_rate, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 2,
                  "max_grad_norm": 1.0, "seed": seed, "save_every": 4, "keep_checkpoints": 1},
    }
    recipe.update(scaled(method, steps))
    return recipe


# ---------------------------------------------------------------- the pieces

def write_data(root: Path) -> None:
    """The four splits as JSONL, made once: train and the two in-distribution sets are disjoint draws of
    one stream; the out-of-distribution set comes from another seed with more steps and larger numbers."""
    folder = root / "data"
    if (folder / "ood.jsonl").is_file():
        return
    sys.path.insert(0, str(REPO / "src"))
    from hybridrft.data.arithmetic import NumberRange, arithmetic_splits, arithmetic_task

    train, held_out = arithmetic_splits(SIZES["train"], SIZES["validation"] + SIZES["id"], seed=DATA_SEED,
                                        min_steps=ID_STEPS[0], max_steps=ID_STEPS[1])
    splits = {"train": train, "validation": held_out[: SIZES["validation"]], "id": held_out[SIZES["validation"]:],
              "ood": arithmetic_task(SIZES["ood"], seed=DATA_SEED + 1, min_steps=OOD_STEPS[0], max_steps=OOD_STEPS[1],
                                     numbers=NumberRange(**OOD_NUMBERS))}
    train_prompts = {e.prompt for e in train}
    assert not train_prompts & {e.prompt for e in splits["ood"]}, "an out-of-distribution problem is in training"
    folder.mkdir(parents=True, exist_ok=True)
    for name, examples in splits.items():
        rows = [{"id": f"{name}-{k}", "prompt": e.prompt, "answer": e.answer, "demonstration": e.demonstrations[0]}
                for k, e in enumerate(examples)]
        tmp = folder / f".{name}.jsonl"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(folder / f"{name}.jsonl")


def hybridrft(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hybridrft", *args], check=True, cwd=REPO)


def use_threads(threads: int | None) -> None:
    """Torch threads of every training and evaluation this job starts: two jobs of one thread each
    share two cores (split the methods between them with ``--methods``)."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def train(root: Path, out: Path, recipe: dict, *, keep_model: bool) -> None:
    """A training run in ``out``: skipped when finished, resumed when a checkpoint exists. A finished
    run keeps its metrics and (``keep_model``) its final model; its checkpoints, 1.3 GB each with
    the optimizer state, are deleted, so that 27 sweep runs and 21 runs fit on one disk."""
    if (out / "done.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    resume = ["--resume"] if (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*")) else []
    started = time.time()
    hybridrft("train", str(out / "recipe.yaml"), "train.overwrite=true", *resume)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    if not keep_model:
        shutil.rmtree(out / "final_model", ignore_errors=True)
    done = {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "last_piece_s": time.time() - started,
            "threads": os.environ.get("OMP_NUM_THREADS", "all")}
    (out / "done.json").write_text(json.dumps(done))


def evaluate(root: Path, model: str, out: Path) -> None:
    """Greedy and avg@4 (temperature 0.6) on both held-out sets; ``hybridrft eval`` resumes itself."""
    suites = ["--suite", f"id={root / 'data' / 'id.jsonl'}", "--suite", f"ood={root / 'data' / 'ood.jsonl'}",
              "--format", "fields", "--field", "prompt=prompt", "--field", "answer=answer", "--field", "id=id"]
    common = ["--max-new-tokens", str(EVAL_TOKENS), "--batch-size", "64"]
    for name, sampling in (("greedy", []), ("sampled", ["--samples", str(AVG_SAMPLES), "--temperature",
                                                        str(AVG_TEMPERATURE), "--seed", "0"])):
        target = out / f"eval-{name}"
        if (target / "results.json").is_file() and (target / "done").is_file():
            continue
        started = time.time()
        hybridrft("eval", model, *suites, *common, *sampling, "-o", str(target))
        (target / "done").write_text(f"{time.time() - started:.1f}\n")


def sweep_choice(root: Path, method: str) -> float:
    """The learning rate with the best validation accuracy after SWEEP_STEPS (ties: the smaller)."""
    scores = {}
    for rate in SWEEP_RATES:
        out = root / "sweep" / f"{method}-lr{rate:g}"
        train(root, out, method_recipe(method, root, out, seed=0, learning_rate=rate, steps=SWEEP_STEPS, curve=False),
              keep_model=False)
        evals = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"]
        scores[rate] = evals[-1]["eval/accuracy"]
    best = max(SWEEP_RATES, key=lambda rate: (scores[rate], -rate))
    (root / "sweep" / f"{method}.json").write_text(json.dumps({"scores": {f"{k:g}": v for k, v in scores.items()},
                                                               "chosen": best}))
    return best


def run(root: Path, methods: list[str], seeds: list[int]) -> None:
    """Data, the base model's evaluation, every method's sweep, then seed by seed every method's run
    and its evaluation (so a partial study already compares every method on its first seeds)."""
    write_data(root)
    evaluate(root, MODEL, root / "base")
    rates = {method: sweep_choice(root, method) for method in methods}
    for k, seed in enumerate(seeds):
        for method in methods:
            if method not in SEEDED and k > 0:
                continue
            out = root / "runs" / f"{method}-seed{seed}"
            recipe = method_recipe(method, root, out, seed=seed, learning_rate=rates[method], steps=STEPS, curve=True)
            train(root, out, recipe, keep_model=True)
            evaluate(root, str(out / "final_model"), out)


# ---------------------------------------------------------------- the results

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_eval(folder: Path) -> dict[str, float] | None:
    path = folder / "results.json"
    if not path.is_file():
        return None
    benchmarks = json.loads(path.read_text())["benchmarks"]
    out = {}
    for name, result in benchmarks.items():
        out.update({f"{name}/{metric}": value for metric, value in result["metrics"].items()})
    return out


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}  # Student's t, 95%
CLAIMS_TESTED = [("srft", other) for other in ("sft", "grpo", "two_stage", "luffy")] + \
                [("sasr", other) for other in ("sft", "grpo", "static_mix")]
METRICS = (("eval-greedy", "id/pass@1", "ID greedy"), ("eval-greedy", "ood/pass@1", "OOD greedy"),
           ("eval-sampled", "id/avg@4", "ID avg@4"), ("eval-sampled", "ood/avg@4", "OOD avg@4"))


def mean_interval(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * 100
    if len(values) == 1:
        return f"{mean:.1f}"
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values)) * 100
    return f"{mean:.1f} ± {half:.1f}"


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """mean(a) - mean(b) and the half-width of its 95% interval: Student's t with the pooled
    variance, df = (n_a - 1) + (n_b - 1); a side with one run adds no variance of its own, so the
    other side's spread stands for both (the one-seed methods)."""
    df = len(a) + len(b) - 2
    if not a or not b or df < 1:
        return None
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    pooled = (sum((x - mean_a) ** 2 for x in a) + sum((x - mean_b) ** 2 for x in b)) / df
    return mean_a - mean_b, T_975.get(df, 1.96) * math.sqrt(pooled * (1 / len(a) + 1 / len(b)))


def claim_table(root: Path) -> list[str]:
    """One row per ordering the papers claim: the difference in points and whether it holds here."""
    scores = {m: {key: [r[key] for o in sorted((root / "runs").glob(f"{m}-seed*")) if (r := read_eval(o / folder))]
                  for folder, key, _ in METRICS} for m in METHODS}
    lines = ["| claim | " + " | ".join(label for _, _, label in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for better, other in CLAIMS_TESTED:
        cells = []
        for _, key, _ in METRICS:
            found = difference_interval(scores[better][key], scores[other][key])
            if found is None:
                cells.append("n/a")
                continue
            diff, half = found[0] * 100, found[1] * 100
            verdict = "holds" if diff - half > 0 else "reversed" if diff + half < 0 else "not separable"
            cells.append(f"{diff:+.1f} ± {half:.1f} ({verdict})")
        lines.append(f"| {LABELS[better]} > {LABELS[other]} | " + " | ".join(cells) + " |")
    return lines


def run_costs(out: Path) -> dict[str, float]:
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"]
    # A group whose rollouts all fail has zero GRPO advantage (demonstrations in the group aside).
    groups = [1.0 - r["groups/none_correct"] for r in rows if "groups/none_correct" in r]
    return {"generated": sum(r.get("tokens/generated", 0) for r in rows),
            "trained": sum(r.get("tokens/trained", 0) for r in rows),
            "seconds": sum(r.get("time/step", 0.0) for r in rows),
            "rewarded": statistics.fmean(groups) if groups else math.nan}


def rewarded_cell(costs: list[dict[str, float]]) -> str:
    rewarded = [c["rewarded"] for c in costs if not math.isnan(c["rewarded"])]
    return f"{statistics.fmean(rewarded) * 100:.0f}%" if rewarded else "-"


def results(root: Path, doc: Path) -> None:
    base_greedy, base_sampled = read_eval(root / "base" / "eval-greedy"), read_eval(root / "base" / "eval-sampled")
    lines = ["| method | seeds | lr | ID greedy | OOD greedy | ID avg@4 | OOD avg@4 | generated tokens | trained tokens | train time | rewarded groups |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if base_greedy:
        lines.append(f"| base model (before) | - | - | {base_greedy['id/pass@1'] * 100:.1f} | {base_greedy['ood/pass@1'] * 100:.1f} | "
                     f"{(base_sampled or {}).get('id/avg@4', math.nan) * 100:.1f} | {(base_sampled or {}).get('ood/avg@4', math.nan) * 100:.1f} | - | - | - | - |")
    for method in METHODS:
        outs = sorted((root / "runs").glob(f"{method}-seed*"))
        greedy = [g for o in outs if (g := read_eval(o / "eval-greedy"))]
        sampled = [s for o in outs if (s := read_eval(o / "eval-sampled"))]
        if not greedy:
            continue
        costs = [run_costs(o) for o in outs if (o / "done.json").is_file()]
        choice = json.loads((root / "sweep" / f"{method}.json").read_text())["chosen"]
        mean = lambda key: statistics.fmean(c[key] for c in costs)  # noqa: E731
        lines.append(
            f"| {LABELS[method]} | {len(greedy)} | {choice:g} | {mean_interval([g['id/pass@1'] for g in greedy])} | "
            f"{mean_interval([g['ood/pass@1'] for g in greedy])} | {mean_interval([s['id/avg@4'] for s in sampled])} | "
            f"{mean_interval([s['ood/avg@4'] for s in sampled])} | {mean('generated'):,.0f} | {mean('trained'):,.0f} | "
            f"{mean('seconds') / 60:.1f} min | {rewarded_cell(costs)} |"
        )
    sweeps = [f"- {LABELS[m]}: " + ", ".join(f"{k}: {v * 100:.1f}%" for k, v in json.loads(p.read_text())["scores"].items())
              for m in METHODS if (p := root / "sweep" / f"{m}.json").is_file()]
    plots = draw_plots(root, doc.parent / "results")
    text = (REPO / "bench" / "reproduce_results.md").read_text()
    text = text.replace("{{TABLE}}", "\n".join(lines)).replace("{{SWEEPS}}", "\n".join(sweeps) or "(not run yet)")
    text = text.replace("{{STATUS}}", status_line(root)).replace("{{SETUP}}", setup_text()).replace("{{ORDERINGS}}", "\n".join(claim_table(root)))
    threads = sorted({json.loads((o / "done.json").read_text()).get("threads", "all")
                      for o in (root / "runs").glob("*-seed*") if (o / "done.json").is_file()})
    text = text.replace("{{THREADS}}", ", ".join(threads) or "n/a")
    text = text.replace("{{PLOTS}}", "\n".join(f"![{p.stem}](results/{p.name})" for p in plots) or "(not drawn yet)")
    text = text.replace("{{CLAIMS}}", written_claims(doc))
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"wrote {doc}")


def setup_text() -> str:
    ood = OOD_NUMBERS
    return "\n".join([
        f"- Model: the embedded {MODEL}, fp32 on a 2-core CPU.",
        f"- Training data: the built-in arithmetic word problems ({ID_STEPS[0]}-{ID_STEPS[1]} operations, addends up "
        f"to 20, one-digit factors, values up to 100), {SIZES['train']:,} problems with one demonstration each.",
        f"- Held-out sets, never trained on: **ID**, {SIZES['id']} further problems of the same generator and stream; "
        f"**OOD**, {SIZES['ood']} problems of the same generator with {OOD_STEPS[0]}-{OOD_STEPS[1]} operations, addends "
        f"up to {ood['max_operand']} and values up to {ood['max_value']} (another seed). A separate validation split of "
        f"{SIZES['validation']} ID problems chooses each method's learning rate.",
        f"- Every method: {STEPS} steps of {PROMPTS} prompts ({STEPS * PROMPTS} prompts seen), {ROLLOUTS} rollouts "
        f"and {DEMOS} demonstration per prompt (where the method uses them), sampling at temperature 1.0 with at most "
        f"{ROLLOUT_TOKENS} new tokens, the `math` reward, the same chat rendering. Each method's other hyperparameters "
        "are its defaults (docs/methods.md); budgets the defaults give in steps of a long run are scaled: "
        f"two-stage switches to GRPO after {scaled('two_stage', STEPS)['two_stage']['sft_steps']} steps, SASR warms up "
        f"for {scaled('sasr', STEPS)['sasr']['warmup_steps']} steps, CHORD's mu rises for "
        f"{scaled('chord', STEPS)['chord']['mu_warmup_steps']} steps and decays over "
        f"{scaled('chord', STEPS)['chord']['mu_decay_steps']} (in the sweep's {SWEEP_STEPS}-step runs: the same "
        "fractions).",
        f"- Learning rate per method: the best validation accuracy after {SWEEP_STEPS} steps among "
        + ", ".join(f"{r:g}" for r in SWEEP_RATES) + " (ties: the smaller).",
        f"- Evaluation: greedy accuracy (pass@1) and avg@{AVG_SAMPLES} at temperature {AVG_TEMPERATURE}, at most "
        f"{EVAL_TOKENS} new tokens, with `hybridrft eval`.",
    ])


CLAIMS = "## The papers' claims, one by one"


def written_claims(doc: Path) -> str:
    """The claims section is written by hand once the numbers are in; a rebuild keeps it."""
    if doc.is_file() and CLAIMS in doc.read_text():
        return doc.read_text().split(CLAIMS, 1)[1].strip()
    return "(written once the study has finished)"


def draw_plots(root: Path, folder: Path) -> list[Path]:
    """``hybridrft report`` over each method's first seed; its accuracy and entropy panels, kept."""
    runs = [o for m in METHODS if (o := root / "runs" / f"{m}-seed0").joinpath("done.json").is_file()]
    if not runs:
        return []
    report = root / "report"
    hybridrft("report", *map(str, runs), "-o", str(report), "--title", "Reproduction: every method, seed 0")
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for name in ("accuracy", "entropy"):
        if (report / "plots" / f"{name}.png").is_file():
            kept.append(Path(shutil.copy(report / "plots" / f"{name}.png", folder / f"{name}.png")))
    return kept


def method_progress(root: Path, method: str) -> tuple[int, int, int, int]:
    """(sweep runs finished, sweep runs in all, runs evaluated, runs in all) of one method."""
    swept = [(root / "sweep" / f"{method}-lr{r:g}" / "done.json").is_file() for r in SWEEP_RATES]
    runs = [(root / "runs" / f"{method}-seed{s}" / "eval-sampled" / "done").is_file()
            for s in (SEEDS if method in SEEDED else SEEDS[:1])]
    return sum(swept), len(swept), sum(runs), len(runs)


def progress(root: Path) -> tuple[int, int, int, int]:
    """The same four counts over every method."""
    return tuple(map(sum, zip(*(method_progress(root, m) for m in METHODS))))


def status_line(root: Path) -> str:
    swept, sweeps, done, runs = progress(root)
    if swept == sweeps and done == runs:
        return f"The study is complete: {sweeps} sweep runs and {runs} runs, every one evaluated."
    return (f"**The study is still running**: {swept} of {sweeps} sweep runs and {done} of {runs} runs are "
            "finished, and the table below holds only those (see the seeds column). The claims are judged "
            "once every run is in.")


def plan(root: Path) -> None:
    for method in METHODS:
        swept, sweeps, done, runs = method_progress(root, method)
        print(f"{method:12s} sweep {swept}/{sweeps}  runs evaluated {done}/{runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "results", "plan"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per training/evaluation process (default: all cores)")
    args = parser.parse_args()
    if args.command == "run":
        use_threads(args.threads)
        run(args.root, [m for m in args.methods.split(",") if m], [int(s) for s in args.seeds.split(",")])
    elif args.command == "results":
        results(args.root, args.doc)
    else:
        plan(args.root)


if __name__ == "__main__":
    main()
