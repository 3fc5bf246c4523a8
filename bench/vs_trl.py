"""hybridrft's GRPO against TRL's GRPOTrainer on identical work, fp32 on CPU, in one invocation.

    .venv/bin/python bench/vs_trl.py                      # TRL at its defaults (gradient checkpointing on)
    .venv/bin/python bench/vs_trl.py --gradient-checkpointing both

Both sides train the embedded SmolLM2-135M-Instruct with GRPO on the same GSM8K prompts in the same
order: the same prompts and rollouts per step, completion budget, sampling (temperature 1, no top-p
or top-k), reward (hybridrft's ``math`` reward, called by both), loss (clipped surrogate, token mean
over the step's batch, group-std advantages, no KL), optimiser (AdamW, same learning rate, betas,
eps, weight decay and gradient clipping) and number of steps. Each side is a worker process that
holds its trainer; the driver makes them take steps in turn (ABBA order, so drift in the machine's
speed falls on both), discards each side's first step as warm-up, and prints per-step wall time,
generated and trained tokens per second, peak resident memory, the ratios and where our step's time
goes. Install TRL with ``bash scripts/setup.sh --bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "@@bench "  # result lines from a worker start with this; everything else is the libraries' chatter


# ---------------------------------------------------------------------------------------- workers


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def emit(payload: dict) -> None:
    print(MARK + json.dumps(payload), flush=True)


def wait_for_turn() -> None:
    command = sys.stdin.readline().strip()
    if command != "step":
        raise SystemExit(f"worker: expected 'step', got {command!r}")


def load_spec(path: str) -> dict:
    return json.loads(Path(path).read_text())


def examples_by_id(spec: dict):
    from hybridrft.data import load_examples

    return {e.id: e for e in load_examples(spec["data"], limit=spec["data_limit"])}


def run_hybridrft_worker(spec: dict) -> None:
    import torch

    from hybridrft.config import load_config
    from hybridrft.train import Trainer

    torch.manual_seed(0)
    examples = list(examples_by_id(spec).values())
    config = load_config(
        overrides=[
            "method=grpo",
            f"model.name_or_path={spec['model']}",
            f"model.gradient_checkpointing={str(spec['ours_gc']).lower()}",
            f"group.num_generations={spec['generations']}",
            "grpo.beta=0.0",
            f"grpo.clip_eps_low={spec['epsilon']}",
            f"grpo.clip_eps_high={spec['epsilon']}",
            "group.advantage_scale=group",
            "group.advantage_eps=1e-4",  # TRL's: (r - mean) / (std + 1e-4)
            "loss.aggregation=token_mean",
            "rollout.temperature=1.0",
            "rollout.top_p=1.0",
            f"rollout.max_new_tokens={spec['max_completion']}",
            f"rollout.generation_batch_size={spec['prompts'] * spec['generations']}",
            "reward.functions=[math]",
            "reward.weights=[1.0]",
            f"train.prompts_per_step={spec['prompts']}",
            f"train.micro_batch_size={spec['ours_micro_batch']}",
            f"train.max_steps={spec['steps'] + 1}",
            f"train.learning_rate={spec['lr']}",
            "train.lr_scheduler=constant",
            "train.lr_warmup_steps=0",
            "train.weight_decay=0.0",
            "train.max_grad_norm=1.0",
            f"train.output_dir={spec['workdir']}/hybridrft",
            "train.overwrite=true",
            "eval.at_start=false",
            "eval.every=0",
            "eval.size=0",
        ]
    )
    trainer = Trainer(config, train_examples=examples, eval_examples=[])
    needed = spec["prompts"] * (spec["steps"] + 1)
    order = trainer.prompts.epoch_order(0)[:needed]
    emit({"prompt_ids": [trainer.train_set.examples[i].id for i in order], "rss_loaded_mib": current_rss_mib()})
    for step in range(1, spec["steps"] + 2):
        wait_for_turn()
        t0 = time.perf_counter()
        m = trainer.training_step(step)
        wall = time.perf_counter() - t0
        emit(
            {
                "step": step,
                "wall_s": wall,
                "generated_tokens": m["tokens/generated"],
                "trained_tokens": m["tokens/trained"],
                "reward_mean": m.get("reward/mean", 0.0),
                "loss": m["loss"],
                "time": {
                    "generate": m["time/generate"],
                    "reward": m["time/reward"],
                    "forward": m["time/forward"],
                    "backward": m["time/backward"],
                    "optimizer": m["time/optimizer"],
                },
                "rss_mib": current_rss_mib(),
            }
        )
    emit({"peak_rss_mib": peak_rss_mib()})


def run_trl_worker(spec: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hybridrft.config import DEFAULT_ANSWER_INSTRUCTION
    from hybridrft.data.chat import prompt_messages
    from hybridrft.models import resolve_model_path
    from hybridrft.rewards import math_answer_reward

    torch.manual_seed(0)
    by_id = examples_by_id(spec)
    rows = [by_id[i] for i in spec["prompt_ids"]]
    dataset = Dataset.from_list(
        [
            {"prompt": prompt_messages(e, system_prompt=None, answer_instruction=DEFAULT_ANSWER_INSTRUCTION), "answer": e.answer}
            for e in rows
        ]
    )
    path = str(resolve_model_path(spec["model"]))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    counted = {"generated": 0, "trained": 0}

    def math(prompts, completions, completion_ids, answer, **_):
        # the reward TRL calls is hybridrft's own; it also counts this step's tokens
        for prompt, ids in zip(prompts, completion_ids):
            prompt_len = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
            counted["generated"] += len(ids)
            counted["trained"] += prompt_len + len(ids)
        return math_answer_reward(prompts, completions, answer)

    class Gate(TrainerCallback):
        """Holds each optimiser step until the driver says go, and reports it when done."""

        def on_step_begin(self, args, state, control, **kwargs):
            wait_for_turn()
            counted.update(generated=0, trained=0)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            emit(
                {
                    "step": state.global_step,
                    "wall_s": time.perf_counter() - self.t0,
                    "generated_tokens": counted["generated"],
                    "trained_tokens": counted["trained"],
                    "rss_mib": current_rss_mib(),
                }
            )

    completions_per_step = spec["prompts"] * spec["generations"]
    per_device = min(8, completions_per_step)  # TRL's default micro-batch is 8 completions
    args = GRPOConfig(
        output_dir=f"{spec['workdir']}/trl",
        use_cpu=True,
        bf16=False,  # fp32 on CPU, like our side
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=completions_per_step // per_device,
        num_generations=spec["generations"],
        max_completion_length=spec["max_completion"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=spec["epsilon"],
        loss_type="dapo",  # token mean over the step's batch, as `loss.aggregation=token_mean`
        scale_rewards="group",
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=spec["trl_gc"],
        max_steps=spec["steps"] + 1,
        shuffle_dataset=False,  # our order, as the driver passed it
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[math], args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[Gate()]
    )
    emit({"rss_loaded_mib": current_rss_mib()})
    trainer.train()
    emit({"peak_rss_mib": peak_rss_mib()})


# ------------------------------------------------------------------------------------------ driver


class Worker:
    def __init__(self, name: str, spec_path: Path, log_path: Path):
        self.name = name
        self.log = open(log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--spec", str(spec_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
            self.log.write(line)
        raise RuntimeError(f"{self.name} worker ended early (exit {self.proc.wait()}); see {self.log.name}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self.read()


def summarise(name: str, steps: list[dict], peak: float) -> dict:
    wall = [s["wall_s"] for s in steps]
    total = sum(wall)
    return {
        "name": name,
        "median_step_s": statistics.median(wall),
        "steps_s": wall,
        "generated_tokens_per_s": sum(s["generated_tokens"] for s in steps) / total,
        "trained_tokens_per_s": sum(s["trained_tokens"] for s in steps) / total,
        "mean_generated_tokens": statistics.mean(s["generated_tokens"] for s in steps),
        "peak_rss_mib": peak,
    }


def drive(args) -> dict:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    gc = args.gradient_checkpointing
    spec = {
        "model": args.model,
        "data": str(Path(args.data).resolve()),
        "data_limit": args.data_limit,
        "prompts": args.prompts,
        "generations": args.generations,
        "max_completion": args.max_completion,
        "steps": args.steps,
        "lr": args.lr,
        "epsilon": 0.2,
        "ours_micro_batch": args.micro_batch,
        "ours_gc": gc == "both",
        "trl_gc": gc in ("both", "trl-default"),
        "workdir": str(workdir),
    }
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    ours = Worker("hybridrft", spec_path, workdir / "hybridrft.log")
    head = ours.read()
    spec["prompt_ids"] = head["prompt_ids"]  # TRL takes the same prompts in the same order
    spec_path.write_text(json.dumps(spec))
    trl = Worker("trl", spec_path, workdir / "trl.log")
    trl.read()

    results: dict[str, list[dict]] = {"hybridrft": [], "trl": []}
    for k in range(args.steps + 1):
        order = [ours, trl] if k % 2 == 0 else [trl, ours]  # ABBA
        for worker in order:
            record = worker.step()
            results[worker.name].append(record)
            print(f"  step {k} {worker.name:9s} {record['wall_s']:7.1f} s  "
                  f"{record['generated_tokens']:5d} generated  {record['trained_tokens']:5d} trained", flush=True)
    peaks = {}
    for worker in (ours, trl):
        peaks[worker.name] = worker.read()["peak_rss_mib"]
        worker.proc.wait(timeout=120)

    measured = {name: steps[1:] for name, steps in results.items()}  # the first step is warm-up
    summary = {name: summarise(name, steps, peaks[name]) for name, steps in measured.items()}
    breakdown = {key: statistics.median(s["time"][key] for s in measured["hybridrft"]) for key in measured["hybridrft"][0]["time"]}
    return {"spec": spec, "summary": summary, "hybridrft_breakdown_median_s": breakdown, "raw": results,
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}


def report(result: dict) -> None:
    ours, trl = result["summary"]["hybridrft"], result["summary"]["trl"]
    spec = result["spec"]
    print()
    print(f"GRPO, {spec['prompts']} prompts x {spec['generations']} rollouts, <= {spec['max_completion']} new tokens, "
          f"{spec['steps']} measured steps after 1 warm-up; gradient checkpointing: hybridrft "
          f"{'on' if spec['ours_gc'] else 'off'}, TRL {'on' if spec['trl_gc'] else 'off'}")
    rows = [
        ("median step (s)", "median_step_s", "{:.1f}"),
        ("generated tokens/s", "generated_tokens_per_s", "{:.1f}"),
        ("trained tokens/s", "trained_tokens_per_s", "{:.1f}"),
        ("generated tokens per step", "mean_generated_tokens", "{:.0f}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
    ]
    print(f"{'':30s}{'hybridrft':>12s}{'TRL':>12s}{'ratio':>10s}")
    for label, key, fmt in rows:
        ratio = ours[key] / trl[key] if trl[key] else float("nan")
        print(f"{label:30s}{fmt.format(ours[key]):>12s}{fmt.format(trl[key]):>12s}{ratio:>10.2f}")
    print(f"speed-up (TRL median / hybridrft median): {trl['median_step_s'] / ours['median_step_s']:.2f}x")
    print("hybridrft step, median seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result["hybridrft_breakdown_median_s"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared/data/gsm8k/train.jsonl"))
    parser.add_argument("--data-limit", type=int, default=512, help="rows read from --data (prompts are drawn from these)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--max-completion", type=int, default=128, help="new tokens per rollout at most")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per side, after one warm-up step")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--micro-batch", type=int, default=16, help="hybridrft's train.micro_batch_size")
    parser.add_argument("--gradient-checkpointing", choices=["trl-default", "both"], default="trl-default",
                        help="trl-default: TRL on (its default), hybridrft off (its default); both: on in both")
    parser.add_argument("--workdir", default="bench/out/vs_trl")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--worker", choices=["hybridrft", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = load_spec(args.spec)
        (run_hybridrft_worker if args.worker == "hybridrft" else run_trl_worker)(spec)
        return
    result = drive(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
