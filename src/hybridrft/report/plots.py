"""Training curves from run folders' ``metrics.jsonl``, as PNG files (matplotlib).

Every figure ("panel") is a grid of small plots, one per metric; several runs overlay on the same
axes, one colour per run throughout, with a legend naming them. ``plot_run(run_dir)`` writes one
run's panels into ``run_dir/plots`` (the trainer's CLI calls it after training); ``plot_runs`` does the
same for any number of runs into any folder (``hybridrft report``).

The panels in ``PANELS`` list the metrics every method shares (loss, reward, accuracy, entropy,
lengths, diagnostics, optimisation, speed). Nothing here names a training method: a method's own
metrics reach the ``method`` panel from the metric keys alone, so a new method gets its plots without
an edit here. The rules:

- **Method panel.** Every numeric key whose prefix (the part before the first ``/``, or the whole key
  without one) is not in ``GENERIC_PREFIXES`` gets its own subplot, titled with the key, in key order.
- **Choice markers.** A key ``P/choice_<name>`` whose values are all 0 or 1 is drawn, when the key
  ``P/p_t`` exists, as markers on the ``P/p_t`` curve (one per step: red squares where it is 1, green
  triangles where it is 0, a legend naming the key); without ``P/p_t`` it is an ordinary subplot.
- **Warm-up references.** A key ``P/<stem>_warmup`` is drawn dashed on the subplot of the first other
  key ``P/<stem>_...`` of the same prefix; without one it is an ordinary subplot.
- Any ``loss/...`` term not listed in the loss panel gets its own subplot there, and any key of the
  prefixes ``groups``, ``demo``, ``kl`` and ``grpo`` (the shared clipped policy loss) not listed in the
  diagnostics panel its own subplot there, titled with the key (``PANEL_PREFIXES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from hybridrft.report.runs import RunData, load_runs  # noqa: E402

# figure name -> (title, [(metric key, subplot title)]). A panel is drawn when any run has any of its
# keys; a subplot when any run has its key. A panel in ``PANEL_PREFIXES`` also picks up the unlisted
# keys of its prefixes; ``method`` is filled from the metric keys themselves (``method_keys``).
PANELS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "loss": (
        "Loss and its terms",
        [
            ("loss", "total loss"),
            ("loss/sft", "SFT"),
            ("loss/policy", "GRPO policy"),
            ("loss/kl", "KL"),
            ("loss/entropy_bonus", "entropy bonus"),
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
    "method": ("Method metrics (keys outside the shared panels)", []),
    "diagnostics": (
        "Diagnostics",
        [
            ("groups/all_correct", "groups with every rollout correct (share)"),
            ("groups/none_correct", "groups with no rollout correct (share)"),
            ("demo/token_prob", "probability of demonstration tokens (mean)"),
            ("kl/initial_policy", "KL to the initial policy (k3, per token)"),
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

# panel -> prefixes whose unlisted keys (``P/...``) it draws as well, titled with the key (the
# clipped share of the shared clipped policy loss, for one, reaches the diagnostics this way)
PANEL_PREFIXES: dict[str, tuple[str, ...]] = {"loss": ("loss",), "diagnostics": ("groups", "demo", "kl", "grpo")}

# prefixes of the metrics the trainer and the shared objective code log for every method; every
# other prefix is a method's own and goes to the ``method`` panel (plus ``kind`` and ``plan``, which
# are text and never plotted)
GENERIC_PREFIXES = frozenset(
    {
        "step", "loss", "lr", "grad_norm", "reward", "accuracy", "entropy", "length", "eval", "time",
        "throughput", "tokens", "advantage", "data", "groups", "demo", "kl", "grpo",
    }
)

# choice markers: the step where the choice key is 1, and where it is 0
ONE_COLOUR, ZERO_COLOUR = "#d62728", "#2ca02c"
# marker shapes (where 1, where 0) of the first, second... choice key on one subplot
CHOICE_MARKERS = [("s", "^"), ("D", "v"), ("P", "X"), ("o", "<")]


def run_colour(index: int) -> str:
    return plt.get_cmap("tab10")(index % 10)


@dataclass
class Subplot:
    """One small plot: its key (a line per run), its title, and the keys drawn on it as well."""

    key: str
    title: str
    markers: list[str] = field(default_factory=list)  # 0/1 keys drawn as markers on the key's curve
    dashed: list[str] = field(default_factory=list)  # keys drawn as dashed lines

    @property
    def all_keys(self) -> list[str]:
        return [self.key, *self.markers, *self.dashed]


def prefix(key: str) -> str:
    return key.split("/", 1)[0]


def _present(runs: list[RunData]) -> set[str]:
    return set().union(*(run.keys() for run in runs)) if runs else set()


def _is_zero_one(key: str, runs: list[RunData]) -> bool:
    return all(v in (0.0, 1.0) for run in runs for v in run.series(key)[1])


def method_keys(runs: list[RunData]) -> list[str]:
    """Every numeric key of some run whose prefix is not a shared one, in key order."""
    return sorted(k for k in _present(runs) if prefix(k) not in GENERIC_PREFIXES)


def _companion_host(key: str, keys: list[str], runs: list[RunData]) -> tuple[str, str] | None:
    """``(host key, "markers" | "dashed")`` when ``key`` is drawn on another key's subplot."""
    head, _, name = key.partition("/")
    if not name:
        return None
    if name.startswith("choice_") and f"{head}/p_t" in keys and _is_zero_one(key, runs):
        return f"{head}/p_t", "markers"
    if name.endswith("_warmup"):
        stem = name[: -len("_warmup")]
        for other in keys:
            if other != key and other.startswith(f"{head}/{stem}_") and not other.endswith("_warmup"):
                return other, "dashed"
    return None


def method_subplots(runs: list[RunData]) -> list[Subplot]:
    """The ``method`` panel: one subplot per method key, choice and warm-up keys on their hosts."""
    keys = method_keys(runs)
    hosts = {key: _companion_host(key, keys, runs) for key in keys}
    for key, host in hosts.items():  # a host drawn on another subplot itself: no host
        if host is not None and hosts[host[0]] is not None:
            hosts[key] = None
    subplots = {key: Subplot(key, key) for key in keys if hosts[key] is None}
    for key, host in hosts.items():
        if host is not None:
            getattr(subplots[host[0]], host[1]).append(key)
    return list(subplots.values())


def panel_subplots(name: str, runs: list[RunData]) -> list[Subplot]:
    """The panel's subplots for keys some run has, in the panel's order."""
    if name == "method":
        return method_subplots(runs)
    present = _present(runs)
    listed = PANELS[name][1]
    subplots = [Subplot(k, t) for k, t in listed if k in present]
    known = {k for k, _ in listed}
    subplots += [Subplot(k, k) for k in sorted(present)
                 if "/" in k and prefix(k) in PANEL_PREFIXES.get(name, ()) and k not in known]
    return subplots


def panel_metric_keys(name: str, runs: list[RunData]) -> list[str]:
    """Every ``metrics.jsonl`` key the panel draws, companions included."""
    return [k for s in panel_subplots(name, runs) for k in s.all_keys]


def _grid(count: int) -> tuple[int, int]:
    cols = count if count <= 3 else 2 if count == 4 else 3
    return (count + cols - 1) // cols, cols


def _subplot_title(sub: Subplot) -> str:
    parts = [sub.title]
    if sub.markers:
        parts.append("markers: " + ", ".join(sub.markers))
    if sub.dashed:
        parts.append("dashed: " + ", ".join(sub.dashed))
    return ("\n" if sum(map(len, parts)) > 40 else "; ").join(parts)


def _plot_choice_markers(ax, run: RunData, host: str, choices: list[str]) -> bool:
    """Markers on the host curve at each step where a choice key is 1 or 0; True when any was drawn."""
    steps, values = run.series(host)
    size = 22 if len(steps) < 80 else 8
    drawn = False
    for index, key in enumerate(choices):
        one_marker, zero_marker = CHOICE_MARKERS[index % len(CHOICE_MARKERS)]
        choice = dict(zip(*run.series(key)))
        for wanted, marker, colour in ((1.0, one_marker, ONE_COLOUR), (0.0, zero_marker, ZERO_COLOUR)):
            points = [(s, v) for s, v in zip(steps, values) if choice.get(s) == wanted]
            if points:
                ax.scatter(*zip(*points), marker=marker, s=size, color=colour, zorder=3, edgecolors="none")
                drawn = True
    return drawn


def _choice_handles(choices: list[str]) -> list[Line2D]:
    handles = []
    for index, key in enumerate(choices):
        one_marker, zero_marker = CHOICE_MARKERS[index % len(CHOICE_MARKERS)]
        handles += [
            Line2D([], [], color=ONE_COLOUR, marker=one_marker, linestyle="none", label=f"{key} = 1"),
            Line2D([], [], color=ZERO_COLOUR, marker=zero_marker, linestyle="none", label=f"{key} = 0"),
        ]
    return handles


def _draw_panel(name: str, runs: list[RunData], path: Path) -> Path | None:
    subplots = panel_subplots(name, runs)
    if not subplots:
        return None
    title = PANELS[name][0]
    rows, cols = _grid(len(subplots))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 2.9 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[len(subplots):]:
        ax.set_visible(False)
    marker_keys: list[str] = []
    for ax, sub in zip(axes.flat, subplots):
        for index, run in enumerate(runs):
            colour = run_colour(index)
            for key in sub.dashed:
                ax.plot(*run.series(key), color=colour, linestyle="--", linewidth=1.1)
            steps, values = run.series(sub.key)
            if not steps:
                continue
            sparse = sub.key.startswith("eval/") or len(steps) < 40
            ax.plot(steps, values, color=colour, marker="o" if sparse and not sub.markers else None, markersize=3.5,
                    linewidth=1.3, label=run.label)
            if sub.markers and _plot_choice_markers(ax, run, sub.key, sub.markers):
                marker_keys += [k for k in sub.markers if k not in marker_keys]
        ax.set_title(_subplot_title(sub), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if sub.key.startswith("accuracy/") or sub.key == "eval/accuracy":
            ax.set_ylim(-0.03, 1.03)
        elif sub.markers and all(0.0 <= v <= 1.0 for run in runs for v in run.series(sub.key)[1]):
            ax.set_ylim(-0.05, 1.05)  # a probability with its choices
    with_data = [i for i, run in enumerate(runs) if any(run.series(k)[0] for s in subplots for k in s.all_keys)]
    handles = [Line2D([], [], color=run_colour(i), linewidth=2, label=runs[i].label) for i in with_data]
    handles += _choice_handles(marker_keys)
    heading = title if len(runs) > 1 else f"{title}: {runs[0].label}"
    fig.suptitle(heading, fontsize=12, fontweight="bold")
    if len(runs) > 1 or marker_keys:
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
