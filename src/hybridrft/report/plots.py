"""Training curves from a run folder's ``metrics.jsonl``, as PNG files (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

# figure name -> (title, [(metric key, label)])
PANELS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "loss": (
        "Loss terms",
        [
            ("loss", "total"),
            ("loss/sft", "SFT"),
            ("loss/policy", "GRPO policy"),
            ("loss/kl", "KL"),
            ("loss/sft_demo", "SFT on demos"),
            ("loss/rl_demo", "RL on demos"),
            ("loss/rl_self_pos", "RL self (+)"),
            ("loss/rl_self_neg", "RL self (-)"),
            ("loss/rl_self", "RL self"),
            ("loss/on_policy", "on-policy (LUFFY)"),
            ("loss/off_policy", "off-policy (LUFFY)"),
        ],
    ),
    "reward": (
        "Reward and accuracy",
        [
            ("reward/mean", "rollout reward"),
            ("accuracy/rollout", "rollout accuracy"),
            ("reward/demo_mean", "demonstration reward"),
            ("eval/accuracy", "held-out accuracy"),
        ],
    ),
    "entropy": (
        "Policy entropy (mean per token)",
        [("entropy/rollout", "rollouts"), ("entropy/demo", "demonstrations")],
    ),
    "weights": (
        "Method weights and switches",
        [
            ("srft/w_sft", "SRFT w_SFT"),
            ("srft/w_rl", "SRFT w_RL"),
            ("sasr/p_t", "SASR p_t"),
            ("sasr/choice_sft", "SASR chose SFT"),
            ("two_stage/phase_rl", "two-stage: RL phase"),
            ("chord/mu", "CHORD mu"),
            ("hpt/sft_prompt_share", "HPT share of SFT prompts"),
        ],
    ),
}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/<panel>.png`` for every panel with data; returns the files written."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, (title, keys) in PANELS.items():
        curves = [(label, *_series(records, key)) for key, label in keys]
        curves = [c for c in curves if c[1]]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, steps, values in curves:
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, values, label=label, marker=marker, markersize=3)
        ax.set_title(f"{title} — {run_dir.name}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
