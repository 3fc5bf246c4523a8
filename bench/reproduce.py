"""A small-scale reproduction: do SRFT and SASR beat their baselines here, at equal budget?

Every method trains on the built-in arithmetic task with the same start, prompts, chat rendering,
reward, sampling, group sizes and number of steps; each method's own hyperparameters are its
defaults (docs/methods.md), its learning rate the best of a short sweep on a validation split.
Evaluation: greedy accuracy and avg@4 at temperature 0.6 on an in-distribution held-out set and on
an out-of-distribution set of harder problems, neither ever trained on.

Two studies share the data. ``warm`` (the default, the main table of docs/RESULTS.md): every method
starts from one SFT checkpoint that solves about a third of the held-out problems
(bench/warm_start.py), the papers' regime; 48 steps; the start is evaluated once. ``base``: the
first study, every method from the base SmolLM2 (3% solved), 16 steps.

The study is a sum of resumable pieces: each piece (a sweep run, a training run, an evaluation)
lives in its own folder under ``--root`` (the warm study's under ``warm/``) and is skipped once
finished; a killed training run resumes from its last checkpoint. ``results`` rebuilds
docs/RESULTS.md from the folders. Run it as two one-thread jobs, the methods split between them:

    python bench/reproduce.py plan                          # what is done, what remains
    python bench/reproduce.py pilot --threads 1             # how many steps: SFT and SRFT for 96
    nohup python bench/reproduce.py run --threads 1 --methods sft,grpo,luffy,srft,static_mix > a.log 2>&1 &
    nohup python bench/reproduce.py run --threads 1 --methods sasr,relift,chord,hpt,prefix_rft > b.log 2>&1 &
    python bench/reproduce.py results                       # docs/RESULTS.md and docs/results/*.png
    python bench/reproduce.py run --study base              # the first study again
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
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "bench" / "out" / "reproduce"

# ---------------------------------------------------------------- the studies' settings

MODEL = "smollm2-135m-instruct"
DATA_SEED = 1234
SIZES = {"train": 2000, "validation": 128, "id": 256, "ood": 256}
ID_STEPS, OOD_STEPS = (1, 2), (3, 4)  # operations per problem
OOD_NUMBERS = dict(max_operand=60, max_factor=9, max_value=300)  # in distribution: 20, 9, 100

PROMPTS, ROLLOUTS, DEMOS = 4, 4, 1  # per step; per prompt; per prompt
ROLLOUT_TOKENS, EVAL_TOKENS = 96, 128
CURVE_EVERY, CURVE_SIZE = 8, 64  # held-out accuracy during training: the first 64 ID problems
AVG_SAMPLES, AVG_TEMPERATURE = 4, 0.6
SEEDS = (0, 1, 2)
LABELS = {"sft": "SFT", "grpo": "GRPO", "two_stage": "SFT then GRPO", "luffy": "LUFFY", "srft": "SRFT",
          "sasr": "SASR", "relift": "ReLIFT", "prefix_rft": "Prefix-RFT", "static_mix": "static mix", "chord": "CHORD",
          "hpt": "HPT"}


@dataclass(frozen=True)
class Study:
    """One protocol: what every method starts from, how long it trains, which methods get 3 seeds,
    and where (under ``--root``) its pieces live."""

    name: str
    folder: str  # under --root; "" for the first study, whose folders came first
    start: str  # the model every method starts from: a model name, or a path under --root
    start_eval: str  # folder under --root of the start's evaluation, made once
    steps: int
    seeded: tuple[str, ...]  # 3 seeds each
    single: tuple[str, ...]  # 1 seed each
    sweep_steps: int
    sweep_rates: tuple[float, ...]
    curve_at_start: bool  # evaluate the curve's step 0 in every run (the first study), or once, from start_eval
    eval_dtype: str  # of the table's evaluations (the curves are the trainer's, in its float32)

    @property
    def methods(self) -> tuple[str, ...]:
        return self.seeded + self.single

    def home(self, root: Path) -> Path:
        return root / self.folder if self.folder else root

    def start_model(self, root: Path) -> str:
        return self.start if self.start == MODEL else str(root / self.start)


# The first study: every method from the base model, which solves 3.1% of the ID problems.
BASE_REGIME = Study(name="base", folder="", start=MODEL, start_eval="base", steps=16,
                    seeded=("sft", "grpo", "two_stage", "luffy", "srft", "sasr"), single=("static_mix", "chord", "hpt"),
                    sweep_steps=8, sweep_rates=(1e-5, 3e-5, 1e-4), curve_at_start=True, eval_dtype="float32")
# The second, in the papers' regime: every method from one SFT checkpoint that solves about a third of
# them (bench/warm_start.py). "SFT then GRPO" is GRPO here; ReLIFT and Prefix-RFT join. The steps: the
# pilot's flattening point (see ``pilot``). The sweep runs a third of that: an 8-step sweep (first tried)
# chose the grid's smallest rate for every method it finished (SFT, GRPO, SASR), because the first
# steps after the warm start dip before they climb (the pilot's SFT at 1e-5: 32.8% -> 28.1% at step 8
# -> 48.4% at step 16), which says little about 48 steps.
WARM_START = Study(name="warm", folder="warm", start="warm/start", start_eval="warm/start-eval", steps=48,
                   seeded=("sft", "grpo", "luffy", "srft", "sasr", "relift", "prefix_rft"),
                   single=("static_mix", "chord", "hpt"),
                   sweep_steps=16, sweep_rates=(3e-6, 1e-5, 3e-5), curve_at_start=False,
                   eval_dtype="bfloat16")
STUDIES = {s.name: s for s in (BASE_REGIME, WARM_START)}
PILOT_METHODS, PILOT_STEPS, PILOT_RATE = ("sft", "srft"), 96, 1e-5


def scaled(method: str, steps: int, learning_rate: float) -> dict:
    """Budgets that a method's defaults state in steps or batch sizes of a long run, scaled to a run of
    ``steps`` steps of PROMPTS prompts (the sweep's shorter runs included, so that they exercise every
    phase too)."""
    return {
        "two_stage": {"two_stage": {"sft_steps": steps // 2}},
        "sasr": {"sasr": {"warmup_steps": max(1, steps // 5)}},
        "chord": {"chord": {"mu_warmup_steps": max(1, steps // 5), "mu_decay_steps": steps // 2}},
        # ReLIFT's scripts fine-tune once the buffer holds one training batch (sft_data_size =
        # train_batch_size = 128), at the RL rate (both 1e-6)
        "relift": {"relift": {"sft_prompts": PROMPTS, "sft_learning_rate": learning_rate}},
        # Prefix-RFT in the same rollout budget: of each prompt's ROLLOUTS slots, one continues a prefix of
        # its demonstration (the default 7 + 1 scaled to 3 + 1); the study's demonstrations are about 20
        # tokens, so the minimum prefix is 4 of them, not 8
        "prefix_rft": {"prefix_rft": {"num_prefix": ROLLOUTS, "num_empty_prefix": ROLLOUTS - 1, "min_prefix_len": 4}},
    }.get(method, {})


def method_recipe(method: str, root: Path, out: Path, *, model: str, seed: int, learning_rate: float, steps: int,
                  eval_split: str, eval_size: int, eval_every: int, eval_at_start: bool) -> dict:
    recipe = {
        "method": method,
        "model": {"name_or_path": model},
        "data": {
            "source": str(root / "data" / "train.jsonl"),
            "eval_source": str(root / "data" / f"{eval_split}.jsonl"),
            "format": "fields",
            "fields": {"prompt": "prompt", "answer": "answer", "demonstration": "demonstration", "id": "id"},
        },
        "rollout": {"temperature": 1.0, "max_new_tokens": ROLLOUT_TOKENS, "generation_batch_size": 32},
        "group": {"num_generations": ROLLOUTS, "demos_per_prompt": DEMOS},
        "reward": {"functions": ["math"], "weights": [1.0]},
        "eval": {"size": eval_size, "max_new_tokens": EVAL_TOKENS, "batch_size": 32, "at_start": eval_at_start,
                 "every": eval_every},
        "train": {"output_dir": str(out), "max_steps": steps, "prompts_per_step": PROMPTS, "micro_batch_size": 10,
                  "learning_rate": learning_rate, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 2,
                  "max_grad_norm": 1.0, "seed": seed, "save_every": 4, "keep_checkpoints": 1},
    }
    recipe.update(scaled(method, steps, learning_rate))
    return recipe


def sweep_recipe(study: Study, method: str, root: Path, out: Path, learning_rate: float) -> dict:
    """A sweep run: seed 0, ``study.sweep_steps`` steps, scored once at the end on the validation split."""
    return method_recipe(method, root, out, model=study.start_model(root), seed=0, learning_rate=learning_rate,
                         steps=study.sweep_steps, eval_split="validation", eval_size=SIZES["validation"],
                         eval_every=0, eval_at_start=False)


def run_recipe(study: Study, method: str, root: Path, out: Path, seed: int, learning_rate: float) -> dict:
    """A run of the table: ``study.steps`` steps, the curve on the first CURVE_SIZE ID problems."""
    return method_recipe(method, root, out, model=study.start_model(root), seed=seed, learning_rate=learning_rate,
                         steps=study.steps, eval_split="id", eval_size=CURVE_SIZE, eval_every=CURVE_EVERY,
                         eval_at_start=study.curve_at_start)


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


def evaluate(root: Path, model: str, out: Path, *, dtype: str = "float32", sampled: bool = True) -> None:
    """Greedy and (``sampled``) avg@4 at temperature 0.6 on both held-out sets, in ``dtype``;
    ``hybridrft eval`` resumes itself."""
    suites = ["--suite", f"id={root / 'data' / 'id.jsonl'}", "--suite", f"ood={root / 'data' / 'ood.jsonl'}",
              "--format", "fields", "--field", "prompt=prompt", "--field", "answer=answer", "--field", "id=id"]
    common = ["--max-new-tokens", str(EVAL_TOKENS), "--batch-size", "64", "--dtype", dtype]
    passes = [("greedy", []), ("sampled", ["--samples", str(AVG_SAMPLES), "--temperature", str(AVG_TEMPERATURE),
                                           "--seed", "0"])]
    for name, sampling in passes[: 2 if sampled else 1]:
        target = out / f"eval-{name}"
        if (target / "results.json").is_file() and (target / "done").is_file():
            continue
        started = time.time()
        hybridrft("eval", model, *suites, *common, *sampling, "-o", str(target))
        (target / "done").write_text(f"{time.time() - started:.1f}\n")


def sweep_choice(study: Study, root: Path, method: str) -> float:
    """The learning rate with the best validation accuracy after ``study.sweep_steps`` (ties: the smaller)."""
    home, scores = study.home(root), {}
    for rate in study.sweep_rates:
        out = home / "sweep" / f"{method}-lr{rate:g}"
        train(root, out, sweep_recipe(study, method, root, out, rate), keep_model=False)
        evals = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "eval"]
        scores[rate] = evals[-1]["eval/accuracy"]
    best = max(study.sweep_rates, key=lambda rate: (scores[rate], -rate))
    (home / "sweep" / f"{method}.json").write_text(json.dumps({"scores": {f"{k:g}": v for k, v in scores.items()},
                                                               "chosen": best}))
    return best


def prepare_start(study: Study, root: Path) -> None:
    """The data, the start (the warm start is trained and chosen once) and its evaluation, made once."""
    write_data(root)
    if study.start != MODEL:
        import warm_start  # its own script: it imports this one's data and evaluation

        warm_start.run(root)
        warm_start.choose(root)
    evaluate(root, study.start_model(root), root / study.start_eval, dtype=study.eval_dtype)
    if study.eval_dtype != "float32":  # the curves' step 0, in the trainer's precision
        evaluate(root, study.start_model(root), root / study.start_eval / "fp32", sampled=False)


def train_and_evaluate(study: Study, root: Path, method: str, out: Path, seed: int, learning_rate: float) -> None:
    """One run of the study's protocol in ``out`` and its end-of-run evaluation (each skipped once done)."""
    train(root, out, run_recipe(study, method, root, out, seed, learning_rate), keep_model=True)
    evaluate(root, str(out / "final_model"), out, dtype=study.eval_dtype)


def run(study: Study, root: Path, methods: list[str], seeds: list[int]) -> None:
    """The start, every method's sweep, then seed by seed every method's run and its evaluation (so a
    partial study already compares every method on its first seeds)."""
    prepare_start(study, root)
    rates = {method: sweep_choice(study, root, method) for method in methods}
    for k, seed in enumerate(seeds):
        for method in methods:
            if method not in study.seeded and k > 0:
                continue
            train_and_evaluate(study, root, method, study.home(root) / "runs" / f"{method}-seed{seed}", seed,
                               rates[method])


def pilot(study: Study, root: Path, methods: list[str]) -> None:
    """Long runs from the start (PILOT_STEPS steps at PILOT_RATE, greedy validation accuracy every
    CURVE_EVERY steps) that show where the curves flatten, and so how many steps the study needs."""
    prepare_start(study, root)
    for method in methods:
        out = study.home(root) / "pilot" / method
        recipe = method_recipe(method, root, out, model=study.start_model(root), seed=0, learning_rate=PILOT_RATE,
                               steps=PILOT_STEPS, eval_split="validation", eval_size=SIZES["validation"],
                               eval_every=CURVE_EVERY, eval_at_start=False)
        train(root, out, recipe, keep_model=False)
    for method in PILOT_METHODS:
        curve = [(r["step"], r["eval/accuracy"]) for r in read_jsonl(study.home(root) / "pilot" / method / "metrics.jsonl")
                 if r.get("kind") == "eval"]
        print(f"{method:8s} " + "  ".join(f"{step}: {acc:.1%}" for step, acc in curve))


# ---------------------------------------------------------------- the results

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_eval(folder: Path) -> dict[str, float] | None:
    """An evaluation's metrics as ``benchmark/metric``, once it is finished (its ``done`` marker: the
    evaluation rewrites ``results.json`` after each benchmark, so an unfinished one lacks some)."""
    path = folder / "results.json"
    if not path.is_file() or not (folder / "done").is_file():
        return None
    benchmarks = json.loads(path.read_text())["benchmarks"]
    out = {}
    for name, result in benchmarks.items():
        out.update({f"{name}/{metric}": value for metric, value in result["metrics"].items()})
    return out


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}  # Student's t, 95%
# The orderings each paper claims: SRFT over SFT, GRPO, SFT then GRPO, LUFFY (and ReLIFT, a baseline of
# its Table 2 for the 7B model); SASR over SFT, GRPO, static mixing. A study tests those of its methods.
CLAIMS_TESTED = [("srft", other) for other in ("sft", "grpo", "two_stage", "luffy", "relift")] + \
                [("sasr", other) for other in ("sft", "grpo", "static_mix")] + \
                [("prefix_rft", other) for other in ("sft", "grpo", "luffy", "srft")]  # Prefix-RFT's own claims
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


def run_folders(home: Path, method: str) -> list[Path]:
    return sorted((home / "runs").glob(f"{method}-seed*"))


def claim_table(home: Path, study: Study) -> list[str]:
    """One row per ordering the papers claim among the study's methods: the difference in points and
    whether it holds here. A claim is judged once both methods have all their seeds (a partial study's
    one-seed side would let the other side's spread stand for a seed still to come), and a difference
    with no spread over seeds on either side gets no verdict: held-out accuracies are counts of
    problems, so seeds can tie exactly, and a zero-width interval would call any difference real."""
    methods = study.methods
    planned = {m: len(SEEDS) if m in study.seeded else 1 for m in methods}
    scores = {m: {key: [r[key] for o in run_folders(home, m) if (r := read_eval(o / folder))]
                  for folder, key, _ in METRICS} for m in methods}
    lines = ["| claim | " + " | ".join(label for _, _, label in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for better, other in CLAIMS_TESTED:
        if better not in methods or other not in methods:
            continue
        cells = []
        for _, key, _ in METRICS:
            a, b = scores[better][key], scores[other][key]
            if len(a) < planned[better] or len(b) < planned[other]:
                cells.append(f"n/a (seeds {len(a)}/{planned[better]}, {len(b)}/{planned[other]})")
                continue
            found = difference_interval(a, b)
            if found is None:
                cells.append("n/a")
                continue
            diff, half = found[0] * 100, found[1] * 100
            if half == 0 and diff != 0:
                verdict = "no spread over seeds"
            else:
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


def main_table(study: Study, root: Path) -> list[str]:
    home = study.home(root)
    start_greedy = read_eval(root / study.start_eval / "eval-greedy")
    start_sampled = read_eval(root / study.start_eval / "eval-sampled") or {}
    lines = ["| method | seeds | lr | ID greedy | OOD greedy | ID avg@4 | OOD avg@4 | generated tokens | trained tokens | train time | rewarded groups |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if start_greedy:
        cells = [start_greedy["id/pass@1"], start_greedy["ood/pass@1"], start_sampled.get("id/avg@4", math.nan),
                 start_sampled.get("ood/avg@4", math.nan)]
        name = "base model (before)" if study.start == MODEL else "warm start (before)"
        lines.append(f"| {name} | - | - | " + " | ".join(f"{v * 100:.1f}" for v in cells) + " | - | - | - | - |")
    for method in study.methods:
        outs = run_folders(home, method)
        greedy = [g for o in outs if (g := read_eval(o / "eval-greedy"))]
        sampled = [s for o in outs if (s := read_eval(o / "eval-sampled"))]
        if not greedy:
            continue
        costs = [run_costs(o) for o in outs if (o / "done.json").is_file()]
        choice = json.loads((home / "sweep" / f"{method}.json").read_text())["chosen"]
        mean = lambda key: statistics.fmean(c[key] for c in costs)  # noqa: E731
        lines.append(
            f"| {LABELS[method]} | {len(greedy)} | {choice:g} | {mean_interval([g['id/pass@1'] for g in greedy])} | "
            f"{mean_interval([g['ood/pass@1'] for g in greedy])} | {mean_interval([s['id/avg@4'] for s in sampled])} | "
            f"{mean_interval([s['ood/avg@4'] for s in sampled])} | {mean('generated'):,.0f} | {mean('trained'):,.0f} | "
            f"{mean('seconds') / 60:.1f} min | {rewarded_cell(costs)} |"
        )
    return lines


def results(study: Study, root: Path, doc: Path) -> None:
    """docs/RESULTS.md: the warm-start study from its folders, then the first study's frozen section."""
    if study is not WARM_START:
        raise SystemExit("the page is built from the warm-start study; the first study's section is "
                         "bench/reproduce_base_regime.md, as measured")
    home = study.home(root)
    sweeps = [f"- {LABELS[m]}: " + ", ".join(f"{k}: {v * 100:.1f}%" for k, v in json.loads(p.read_text())["scores"].items())
              for m in study.methods if (p := home / "sweep" / f"{m}.json").is_file()]
    threads = sorted({json.loads((o / "done.json").read_text()).get("threads", "all")
                      for o in (home / "runs").glob("*-seed*") if (o / "done.json").is_file()})
    plots = draw_curves(study, root, doc.parent / "results")
    fills = {
        "STATUS": status_line(study, root), "SETUP": setup_text(study, root), "TABLE": "\n".join(main_table(study, root)),
        "SWEEPS": "\n".join(sweeps) or "(not run yet)", "THREADS": ", ".join(threads) or "n/a",
        "PLOTS": "\n".join(f"![{p.stem}](results/{p.name})" for p in plots) or "(not drawn yet)",
        "ORDERINGS": "\n".join(claim_table(home, study)), "PILOT": pilot_text(study, root),
        "CLAIMS": written_claims(doc), "BASE_REGIME": (REPO / "bench" / "reproduce_base_regime.md").read_text().rstrip(),
        "DISTILL": "\n".join(distill_demo_table()), "COST": cost_text(study, root),
        "ENDS": "\n".join(first_and_last_table(study, root)),
    }
    text = (REPO / "bench" / "reproduce_results.md").read_text()
    for key, value in fills.items():
        text = text.replace("{{" + key + "}}", value)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"wrote {doc}")


def eval_seconds(folder: Path) -> float:
    """Seconds of the evaluations under ``folder`` (each ``done`` marker holds its own)."""
    return sum(float(done.read_text()) for done in folder.rglob("eval-*/done"))


def cost_text(study: Study, root: Path) -> str:
    """What the study has cost so far, in hours of one core (every job ran on one thread), stage by stage.

    The trainer times its steps; the pieces around them (loading the model, the 64-problem evaluations
    every 8 steps, checkpoints) are counted from the runs whose training ran in one piece, where the
    wall-clock of that piece covers them: a resumed run's last piece covers only its last steps."""
    home = study.home(root)
    stages = [("the warm start (SFT)", [home / "sft"]), ("the pilot", sorted((home / "pilot").glob("*"))),
              ("an earlier 8-step sweep, discarded for the 16-step one", sorted((home / "sweep-8steps").glob("*-lr*"))),
              ("runs discarded after a bug fix (kept in the study's `discarded/` folder)",
               sorted(m.parent for m in (home / "discarded").rglob("metrics.jsonl"))),
              ("the learning-rate sweeps", sorted((home / "sweep").glob("*-lr*"))),
              ("the runs", sorted((home / "runs").glob("*-seed*")))]
    stages = [(name, {f: run_costs(f)["seconds"] for f in folders if (f / "metrics.jsonl").is_file()})
              for name, folders in stages]
    ratios = []
    for _, step_time in stages:
        for out, steps in step_time.items():
            if (out / "done.json").is_file() and steps > 0:
                wall = json.loads((out / "done.json").read_text())["last_piece_s"]
                if wall >= steps:
                    ratios.append(wall / steps)
    around = statistics.median(ratios) if ratios else 1.0
    lines, total = [], 0.0
    for name, step_time in stages:
        if not step_time:
            continue
        folders = list(step_time)
        steps, evals = sum(step_time.values()), sum(map(eval_seconds, folders))
        total += steps * around + evals
        lines.append(f"| {name} | {len(folders)} | {steps / 3600:.1f} h | {evals / 3600:.1f} h | "
                     f"{(steps * around + evals) / 3600:.1f} h |")
    start_evals = eval_seconds(root / study.start_eval)
    total += start_evals
    lines.append(f"| the start's evaluations (bfloat16 and float32) | 1 | - | {start_evals / 3600:.1f} h | "
                 f"{start_evals / 3600:.1f} h |")
    return "\n".join([
        "| stage | runs | training steps | end-of-run evaluation | with the time around the steps |",
        "|---|---|---|---|---|", *lines,
        f"| **all** | | | | **{total / 3600:.1f} h** |", "",
        f"Hours of one core (every job ran on one thread, two jobs side by side). The time around the "
        f"steps (loading, the curves' evaluations, checkpoints) is the median ratio of wall-clock to step "
        f"time, {around:.2f}, over the runs that trained in one piece ({len(ratios)} of them). On the 2 cores these "
        f"hours come to about {total / 7200:.1f} h of wall-clock, against a budget of about 6 h planned for it."])


def distill_demo_table() -> list[str]:
    import distill_demo  # bench/distill_demo.py: its own runs, beside this study's

    return distill_demo.table()


def setup_text(study: Study, root: Path) -> str:
    ood, steps = OOD_NUMBERS, study.steps
    start = json.loads((root / "warm" / "start.json").read_text()) if study.start != MODEL else None
    lines = [f"- Model: the embedded {MODEL}, fp32 on a 2-core CPU."]
    if start:
        import warm_start

        lines.append(
            f"- Start of every method: one SFT run from {MODEL} on the training split ({warm_start.LEARNING_RATE:g} "
            f"learning rate, {2 * PROMPTS} prompts per step, one demonstration each; `bench/warm_start.py`), "
            f"checkpointed and scored greedily on the validation split every {warm_start.EVERY} steps: "
            + ", ".join(f"step {k}: {v * 100:.1f}%" for k, v in start["curve"].items())
            + f". Step {start['step']} is the checkpoint closest to {warm_start.TARGET:.0%} inside the "
            f"{warm_start.BAND[0]:.0%}-{warm_start.BAND[1]:.0%} band; it has seen {start['step'] * 2 * PROMPTS} "
            "training problems, none of the held-out ones. Every method loads its weights with a fresh AdamW "
            "(the warm start's optimizer state is not kept).")
    lines += [
        f"- Training data: the built-in arithmetic word problems ({ID_STEPS[0]}-{ID_STEPS[1]} operations, addends up "
        f"to 20, one-digit factors, values up to 100), {SIZES['train']:,} problems with one demonstration each.",
        f"- Held-out sets, never trained on: **ID**, {SIZES['id']} further problems of the same generator and stream; "
        f"**OOD**, {SIZES['ood']} problems of the same generator with {OOD_STEPS[0]}-{OOD_STEPS[1]} operations, addends "
        f"up to {ood['max_operand']} and values up to {ood['max_value']} (another seed). A separate validation split of "
        f"{SIZES['validation']} ID problems chooses each method's learning rate.",
        f"- Every method: {steps} steps of {PROMPTS} prompts ({steps * PROMPTS} prompts seen), {ROLLOUTS} rollouts "
        f"and {DEMOS} demonstration per prompt (where the method uses them), sampling at temperature 1.0 with at most "
        f"{ROLLOUT_TOKENS} new tokens, the `math` reward, the same chat rendering. Each method's other hyperparameters "
        "are its defaults (docs/methods.md); budgets the defaults give in steps or batches of a long run are scaled: "
        + budgets_text(study) + ".",
        f"- Learning rate per method: the best validation accuracy after {study.sweep_steps} steps from the start among "
        + ", ".join(f"{r:g}" for r in study.sweep_rates) + " (ties: the smaller).",
        f"- Evaluation: the start once; every run at its end, greedy accuracy (pass@1) and avg@{AVG_SAMPLES} at "
        f"temperature {AVG_TEMPERATURE} on the full ID and OOD sets, at most {EVAL_TOKENS} new tokens, with "
        f"`hybridrft eval --dtype {study.eval_dtype}`" + (EVAL_DTYPE_NOTE if study.eval_dtype != "float32" else "")
        + f"; during training, greedy accuracy on the first {CURVE_SIZE} ID problems every {CURVE_EVERY} steps, "
        "in the trainer's float32 (the curves).",
    ]
    return "\n".join(lines)


def budgets_text(study: Study) -> str:
    parts = []
    for method in study.methods:
        found = scaled(method, study.steps, 0.0)
        if method == "two_stage":
            parts.append(f"two-stage switches to GRPO after {found['two_stage']['sft_steps']} steps")
        elif method == "sasr":
            parts.append(f"SASR warms up for {found['sasr']['warmup_steps']} steps")
        elif method == "chord":
            parts.append(f"CHORD's mu rises for {found['chord']['mu_warmup_steps']} steps and decays over "
                         f"{found['chord']['mu_decay_steps']}")
        elif method == "prefix_rft":
            parts.append(f"Prefix-RFT's {found['prefix_rft']['num_prefix']} rollout slots per prompt hold "
                         f"{found['prefix_rft']['num_empty_prefix']} ordinary rollouts and 1 continuing a prefix of at least "
                         f"{found['prefix_rft']['min_prefix_len']} demonstration tokens, its fraction's bound decaying over the run")
        elif method == "relift":
            parts.append(f"ReLIFT fine-tunes once its buffer holds {found['relift']['sft_prompts']} unsolved prompts "
                         "(one step's batch, as its scripts' 128 of 128), at the run's learning rate (its scripts: "
                         "both 1e-6)")
    return "; ".join(parts) + f" (in the sweep's {study.sweep_steps}-step runs: the same fractions)"


def pilot_text(study: Study, root: Path) -> str:
    """The pilot's validation curves, one line per method."""
    lines = []
    for method in PILOT_METHODS:
        curve = [(r["step"], r["eval/accuracy"]) for r in read_jsonl(study.home(root) / "pilot" / method / "metrics.jsonl")
                 if r.get("kind") == "eval"]
        if curve:
            lines.append(f"- {LABELS[method]}: " + ", ".join(f"{step}: {acc * 100:.1f}%" for step, acc in curve))
    return "\n".join(lines) or "(not run yet)"


EVAL_DTYPE_NOTE = (
    " (this CPU multiplies bfloat16 on its AMX units, 2.5x as fast as float32 here, which is what fits the "
    "study's 2,560 completions per run into its budget; on the start, 9 of the first 128 ID problems' greedy "
    "verdicts differ between the two precisions, 33.6% in bfloat16 against 35.9% in float32, so rows compare "
    "with each other, all in bfloat16, and not with float32 numbers)")

CLAIMS = "## Claim by claim"


def written_claims(doc: Path) -> str:
    """The claims section is written by hand once the numbers are in; a rebuild keeps it (up to the
    next ``## `` heading)."""
    if doc.is_file() and CLAIMS in doc.read_text():
        return doc.read_text().split(CLAIMS, 1)[1].split("\n## ", 1)[0].strip()
    return "(written once the study has finished)"


CURVE_PANELS = (("eval/accuracy", "held-out accuracy (first 64 ID problems, greedy)"),
                ("reward/mean", "rollout reward (mean of the step's rollouts)"),
                ("entropy/rollout", "policy entropy on its rollouts (nats/token)"),
                ("entropy/demo", "policy entropy on the demonstrations (nats/token)"))
SMOOTH = 5  # steps in the moving average of the per-step panels


def start_curve_point(root: Path, study: Study) -> float | None:
    """The curve's step 0: the start's greedy accuracy on the first CURVE_SIZE ID problems, from its one
    evaluation (the warm-start study does not evaluate step 0 in every run)."""
    folder = root / study.start_eval / ("fp32" if study.eval_dtype != "float32" else "") / "eval-greedy"
    rows = read_jsonl(folder / "generations" / "id.jsonl")
    first = [r for r in rows if int(r["id"].split("-")[-1]) < CURVE_SIZE]
    return statistics.fmean(bool(r["correct"]) for r in first) if len(first) == CURVE_SIZE else None


def method_curves(folders: list[Path], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, seed mean, seed minimum and seed maximum of one metric (a training metric smoothed over
    SMOOTH steps first); steps where a seed did not log it (an SFT step of SASR) are left out."""
    kind = "eval" if key.startswith("eval/") else "train"
    per_seed = []
    for folder in folders:
        rows = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("kind") == kind and key in r]
        steps, values = [r["step"] for r in rows], [r[key] for r in rows]
        if kind == "train":
            values = [statistics.fmean(values[max(0, i - SMOOTH + 1): i + 1]) for i in range(len(values))]
        per_seed.append(dict(zip(steps, values)))
    steps = sorted(set().union(*per_seed)) if per_seed else []
    steps = [s for s in steps if all(s in seed for seed in per_seed)]
    columns = [[seed[s] for seed in per_seed] for s in steps]
    return steps, [statistics.fmean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


WINDOW = 8  # steps at each end of a run that the first-and-last table averages


def window_mean(rows: list[dict], key: str, first: bool, steps: int) -> float | None:
    """Mean of a training metric over a run's first (or last) WINDOW steps, over the steps that logged it."""
    span = range(1, WINDOW + 1) if first else range(steps - WINDOW + 1, steps + 1)
    values = [r[key] for r in rows if r.get("kind") == "train" and r["step"] in span and key in r]
    return statistics.fmean(values) if values else None


def first_and_last_table(study: Study, root: Path) -> list[str]:
    """Each curve panel's per-step metrics, averaged over a run's first and last WINDOW steps and then
    over seeds: the numbers the curves show, without reading them off a plot."""
    keys = [(key, title.split(" (")[0]) for key, title in CURVE_PANELS if not key.startswith("eval/")]
    lines = ["| method | seeds | " + " | ".join(f"{title}, steps 1-{WINDOW} → {study.steps - WINDOW + 1}-{study.steps}"
                                                 for _, title in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    home = study.home(root)
    for method in study.methods:
        folders = [o for o in run_folders(home, method) if (o / "done.json").is_file()]
        if not folders:
            continue
        runs = [read_jsonl(o / "metrics.jsonl") for o in folders]
        cells = []
        for key, _ in keys:
            ends = [[v for rows in runs if (v := window_mean(rows, key, first, study.steps)) is not None]
                    for first in (True, False)]
            cells.append(" → ".join(f"{statistics.fmean(e):.3f}" if e else "-" for e in ends) if any(ends) else "-")
        lines.append(f"| {LABELS[method]} | {len(folders)} | " + " | ".join(cells) + " |")
    return lines


def draw_curves(study: Study, root: Path, folder: Path) -> list[Path]:
    """One figure, four panels, every method overlaid: its seeds' mean, and their range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    home = study.home(root)
    finished = {m: [o for o in run_folders(home, m) if (o / "done.json").is_file()] for m in study.methods}
    finished = {m: runs for m, runs in finished.items() if runs}
    if not finished:
        return []
    start = start_curve_point(root, study)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, (key, title) in zip(axes.flat, CURVE_PANELS):
        for k, (method, runs) in enumerate(finished.items()):
            steps, mean, low, high = method_curves(runs, key)
            if key == "eval/accuracy" and start is not None and steps and steps[0] != 0:
                steps, mean, low, high = [0, *steps], [start, *mean], [start, *low], [start, *high]
            if not steps:
                continue
            colour = f"C{k}"
            ax.plot(steps, mean, color=colour, label=f"{LABELS[method]} ({len(runs)})",
                    marker="o" if key == "eval/accuracy" else None, markersize=3)
            if len(runs) > 1:
                ax.fill_between(steps, low, high, color=colour, alpha=0.12, linewidth=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(loc="lower right", fontsize=8, ncols=2, title="method (seeds)", title_fontsize=8)
    fig.suptitle(f"From the warm start: every method, mean over seeds, range shaded; per-step panels "
                 f"smoothed over {SMOOTH} steps", fontsize=11)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "warm-curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def method_progress(study: Study, root: Path, method: str) -> tuple[int, int, int, int]:
    """(sweep runs finished, sweep runs in all, runs evaluated, runs in all) of one method."""
    home = study.home(root)
    swept = [(home / "sweep" / f"{method}-lr{r:g}" / "done.json").is_file() for r in study.sweep_rates]
    runs = [(home / "runs" / f"{method}-seed{s}" / "eval-sampled" / "done").is_file()
            for s in (SEEDS if method in study.seeded else SEEDS[:1])]
    return sum(swept), len(swept), sum(runs), len(runs)


def progress(study: Study, root: Path) -> tuple[int, int, int, int]:
    """The same four counts over every method."""
    return tuple(map(sum, zip(*(method_progress(study, root, m) for m in study.methods))))


def status_line(study: Study, root: Path) -> str:
    swept, sweeps, done, runs = progress(study, root)
    if swept == sweeps and done == runs:
        return f"The study is complete: {sweeps} sweep runs and {runs} runs, every one evaluated."
    return (f"**The study is still running**: {swept} of {sweeps} sweep runs and {done} of {runs} runs are "
            "finished, and the table below holds only those (see the seeds column). The claims are judged "
            "once every run is in.")


def plan(study: Study, root: Path) -> None:
    for method in study.methods:
        swept, sweeps, done, runs = method_progress(study, root, method)
        print(f"{method:12s} sweep {swept}/{sweeps}  runs evaluated {done}/{runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "sweep", "pilot", "results", "plan"],
                        help="run: the whole study (sweeps first); sweep: the learning-rate sweeps only")
    parser.add_argument("--study", choices=sorted(STUDIES), default=WARM_START.name,
                        help="warm: every method from the shared SFT warm start (the main table); "
                             "base: the first study, every method from the base model")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method of the study)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per training/evaluation process (default: all cores)")
    args = parser.parse_args()
    study = STUDIES[args.study]
    default_methods = PILOT_METHODS if args.command == "pilot" else study.methods
    methods = [m for m in (args.methods or ",".join(default_methods)).split(",") if m]
    use_threads(args.threads)
    if args.command == "run":
        run(study, args.root, methods, [int(s) for s in args.seeds.split(",")])
    elif args.command == "sweep":
        prepare_start(study, args.root)
        for method in methods:
            sweep_choice(study, args.root, method)
    elif args.command == "pilot":
        pilot(study, args.root, methods)
    elif args.command == "results":
        results(study, args.root, args.doc)
    else:
        plan(study, args.root)


if __name__ == "__main__":
    main()
