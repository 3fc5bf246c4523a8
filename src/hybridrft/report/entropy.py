"""Policy entropy over training for several runs on one figure (SRFT paper, Figs. 4-6 style).

Reads ``entropy/rollout`` (mean token entropy of the policy on its own rollouts) and ``entropy/demo``
(on the demonstrations, teacher-forced) from each run's ``metrics.jsonl``. SRFT's claim is that its
entropy-aware weights keep the rollout entropy from collapsing as plain RL does, while SFT raises it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridrft.report.plots import plt, run_colour
from hybridrft.report.runs import RunData

ENTROPY_KEYS = (("entropy/rollout", "on the policy's rollouts"), ("entropy/demo", "on the demonstrations"))


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (the first points average what exists so far)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_entropy_dynamics(runs: list[RunData], path: str | Path, *, smooth: int = 1) -> Path | None:
    """One subplot per entropy key that any run has, all runs overlaid; ``None`` when no run logged
    entropy. With ``smooth > 1`` the raw curve is drawn faint and its trailing moving average solid."""
    keys = [(k, t) for k, t in ENTROPY_KEYS if any(run.series(k)[0] for run in runs)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.2), squeeze=False, layout="constrained")
    for ax, (key, title) in zip(axes.flat, keys):
        for index, run in enumerate(runs):
            steps, values = run.series(key)
            if not steps:
                continue
            colour = run_colour(index)
            marker = "o" if len(steps) < 40 else None
            if smooth > 1:
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
                ax.plot(steps, moving_average(values, smooth), color=colour, linewidth=1.8, label=run.label)
            else:
                ax.plot(steps, values, color=colour, linewidth=1.6, marker=marker, markersize=3.5, label=run.label)
        ax.set_title(f"mean token entropy {title}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    note = f" (moving average over {smooth} steps)" if smooth > 1 else ""
    fig.suptitle(f"Policy entropy during training{note}", fontsize=12, fontweight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
