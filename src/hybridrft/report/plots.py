"""Training curves from run folders' ``metrics.jsonl``, as PNG files (matplotlib).

Every figure ("panel") is a grid of small plots, one per metric; several runs overlay on the same
axes, one colour per run throughout, with a legend naming them. ``plot_run(run_dir)`` writes one
run's panels into ``run_dir/plots`` (the trainer's CLI calls it after training); ``plot_runs`` does the
same for any number of runs into any folder (``hybridrft report``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from hybridrft.report.runs import RunData, load_runs, number  # noqa: E402

# figure name -> (title, [(metric key, subplot title)]). A panel is drawn when any run has any of its
# keys; a subplot when any run has its key. ``loss`` also picks up unlisted ``loss/...`` terms.
PANELS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "loss": (
        "Loss and its terms",
        [
            ("loss", "total loss"),
            ("loss/sft", "SFT"),
            ("loss/policy", "GRPO policy"),
            ("loss/kl", "KL"),
            ("loss/entropy_bonus", "entropy bonus"),
            ("loss/sft_demo", "SRFT: SFT on demos"),
            ("loss/rl_demo", "SRFT: RL on demos"),
            ("loss/rl_self", "SRFT: RL on rollouts"),
            ("loss/rl_self_pos", "SRFT: RL on rollouts (+)"),
            ("loss/rl_self_neg", "SRFT: RL on rollouts (-)"),
            ("loss/on_policy", "LUFFY: on-policy"),
            ("loss/off_policy", "LUFFY: off-policy"),
        ],
    ),
    "reward": (
        "Reward",
        [
            ("reward/mean", "rollout reward (mean)"),
            ("reward/std", "rollout reward (std)"),
            ("reward/demo_mean", "demonstration reward"),
            ("eval/mean_reward", "held-out reward (greedy)"),
        ],
    ),
    "accuracy": (
        "Accuracy",
        [
            ("accuracy/rollout", "rollout accuracy"),
            ("eval/accuracy", "held-out accuracy (greedy)"),
        ],
    ),
    "entropy": (
        "Policy entropy (mean per token)",
        [("entropy/rollout", "on rollouts"), ("entropy/demo", "on demonstrations")],
    ),
    "length": (
        "Response length (tokens)",
        [
            ("length/response_mean", "rollout length (mean)"),
            ("length/response_max", "rollout length (max)"),
            ("length/truncated_frac", "rollouts truncated (share)"),
            ("length/demo_mean", "demonstration length (mean)"),
            ("eval/response_length", "held-out length (mean)"),
            ("eval/truncated", "held-out truncated (share)"),
        ],
    ),
    "weights": (
        "Method weights and switches",
        [
            ("srft/w_sft", "SRFT w_SFT (SFT weight on demonstrations)"),
            ("srft/w_rl", "SRFT w_RL (weight on correct rollouts)"),
            ("chord/mu", "CHORD mu"),
            ("static_mix/mu", "static mix mu"),
            ("hpt/sft_prompt_share", "HPT share of prompts on SFT"),
            ("two_stage/phase_rl", "two-stage: RL phase (1) / SFT (0)"),
        ],
    ),
    "sasr": (
        "SASR: probability of an SFT step and the choice made",
        [
            ("sasr/p_t", "p_t = P(SFT step); markers: the step taken"),
            ("sasr/g_sft", "G_sft (latest SFT grad norm), G_warmup dashed"),
        ],
    ),
    "optimizer": (
        "Optimisation",
        [("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)"), ("advantage/abs_mean", "mean |advantage|")],
    ),
    "throughput": (
        "Speed",
        [
            ("throughput/tokens_per_s", "trained tokens / s"),
            ("throughput/generated_tokens_per_s", "generated tokens / s"),
            ("time/step", "seconds per step"),
        ],
    ),
}

# SASR step markers: the choice per step
SFT_COLOUR, RL_COLOUR = "#d62728", "#2ca02c"


def run_colour(index: int) -> str:
    return plt.get_cmap("tab10")(index % 10)


# keys drawn inside another key's subplot
COMPANION_KEYS = {"sasr/p_t": ["sasr/choice_sft"], "sasr/g_sft": ["sasr/g_warmup"]}


def panel_keys(name: str, runs: list[RunData]) -> list[tuple[str, str]]:
    """The panel's (key, title) pairs that some run has, in the panel's order."""
    present = set().union(*(run.keys() for run in runs)) if runs else set()
    keys = [(k, t) for k, t in PANELS[name][1] if k in present]
    if name == "loss":
        listed = {k for k, _ in PANELS[name][1]}
        keys += [(k, k) for k in sorted(present) if k.startswith("loss/") and k not in listed]
    return keys


def _grid(count: int) -> tuple[int, int]:
    cols = count if count <= 3 else 2 if count == 4 else 3
    return (count + cols - 1) // cols, cols


def _plot_sasr_choices(ax, run: RunData, colour) -> None:
    """p_t as a line in the run's colour, each step's choice as a marker: SFT red squares, RL green triangles."""
    steps, values = run.series("sasr/p_t")
    ax.plot(steps, values, color=colour, linewidth=1.2, label=run.label)
    choice = {r["step"]: number(r.get("sasr/choice_sft")) for r in run.train if "step" in r}
    sft = [(s, v) for s, v in zip(steps, values) if choice.get(s) == 1.0]
    rl = [(s, v) for s, v in zip(steps, values) if choice.get(s) == 0.0]
    size = 22 if len(steps) < 80 else 8
    if sft:
        ax.scatter(*zip(*sft), marker="s", s=size, color=SFT_COLOUR, zorder=3, edgecolors="none")
    if rl:
        ax.scatter(*zip(*rl), marker="^", s=size, color=RL_COLOUR, zorder=3, edgecolors="none")
    ax.set_ylim(-0.05, 1.05)


def _draw_panel(name: str, runs: list[RunData], path: Path) -> Path | None:
    keys = panel_keys(name, runs)
    if not keys:
        return None
    title = PANELS[name][0]
    rows, cols = _grid(len(keys))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 2.9 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, (key, subtitle) in zip(axes.flat, keys):
        for index, run in enumerate(runs):
            colour = run_colour(index)
            if key == "sasr/p_t":
                _plot_sasr_choices(ax, run, colour)
                continue
            if key == "sasr/g_sft":
                ax.plot(*run.series("sasr/g_warmup"), color=colour, linestyle="--", linewidth=1.1)
            steps, values = run.series(key)
            if not steps:
                continue
            sparse = key.startswith("eval/") or len(steps) < 40
            ax.plot(steps, values, color=colour, marker="o" if sparse else None, markersize=3.5, linewidth=1.3, label=run.label)
        ax.set_title(subtitle, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if key.startswith("accuracy/") or key == "eval/accuracy":
            ax.set_ylim(-0.03, 1.03)
    with_data = [i for i, run in enumerate(runs) if any(run.series(k)[0] for k, _ in keys)]
    handles = [Line2D([], [], color=run_colour(i), linewidth=2, label=runs[i].label) for i in with_data]
    if name == "sasr":
        handles += [
            Line2D([], [], color=SFT_COLOUR, marker="s", linestyle="none", label="SFT step"),
            Line2D([], [], color=RL_COLOUR, marker="^", linestyle="none", label="RL (GRPO) step"),
        ]
    heading = title if len(runs) > 1 else f"{title}: {runs[0].label}"
    fig.suptitle(heading, fontsize=12, fontweight="bold")
    if len(runs) > 1 or name == "sasr":
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_runs(runs: list[RunData], out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<panel>.png`` for every panel with data in any run; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PANELS:
        path = _draw_panel(name, runs, out_dir / f"{name}.png")
        if path is not None:
            written.append(path)
    return written


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``run_dir/plots/<panel>.png`` for every panel with data; returns the files written.

    Raises ``RunFolderError`` (a ``ValueError``) when the folder has no ``metrics.jsonl``.
    """
    return plot_runs(load_runs([run_dir]), Path(run_dir) / "plots")
