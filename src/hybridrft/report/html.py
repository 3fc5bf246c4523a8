"""One self-contained ``report.html`` for one or several run folders.

The page embeds every image as a base64 ``data:`` URI and carries its own CSS; it loads nothing from
the network and opens straight from disk. It holds a summary table, one header per run with its key
settings (the config section named after its method, ``config[method]``, plus the shared ``group``,
``grpo`` and ``loss`` sections: no method is named here), the training-curve panels (``plots.py``;
several runs overlay on the same axes), and the diagnostics that ``hybridrft analyze`` left in
``RUN/analysis/`` (and, for several runs, in ``OUTPUT/analysis/``): every PNG, plus the token-shift
summary and one response coloured token by token when ``shift.json`` is there.
"""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from hybridrft.report.plots import panel_metric_keys, plot_runs, run_colour
from hybridrft.report.runs import RunData, load_runs, number
from hybridrft.report.shift import colour_scale, shift_colour

ANALYSIS_TITLES = {
    "shift-histogram.png": "Token probability shift, histogram (SRFT paper Fig. 2b)",
    "shift-tokens.png": "Token probability shift on one response (SRFT paper Fig. 2a)",
    "entropy-dynamics.png": "Policy entropy during training (SRFT paper Figs. 4-6)",
}

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 2px solid #d9dce1; }
h3 { font-size: 16px; margin: 0 0 10px; }
p.meta { color: #5f6368; margin: 0 0 14px; font-size: 13px; }
nav { font-size: 13px; margin-bottom: 8px; }
nav a { margin-right: 14px; color: #1a5fb4; text-decoration: none; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #d9dce1; padding: 6px 10px; text-align: right; vertical-align: top; }
th { background: #eef0f3; font-weight: 600; }
td.l, th.l { text-align: left; }
td.run { white-space: nowrap; }
.up { color: #1a7f37; } .down { color: #c62828; }
.runs { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; }
.card { background: #fff; border: 1px solid #d9dce1; border-radius: 8px; padding: 14px 16px; }
.card dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 0; font-size: 13px; }
.card dt { color: #5f6368; } .card dd { margin: 0; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 7px; vertical-align: -1px; }
code { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 12px; }
figure { background: #fff; border: 1px solid #d9dce1; border-radius: 8px; margin: 0 0 16px; padding: 10px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 12px; color: #5f6368; margin-top: 6px; }
.tokens { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 13px; line-height: 1.9;
          white-space: pre-wrap; background: #fff; border: 1px solid #d9dce1; border-radius: 8px; padding: 12px; }
.tokens span { border-radius: 2px; padding: 1px 0; }
.legend { font-size: 12px; color: #5f6368; margin: 6px 0 16px; }
.empty { color: #5f6368; font-style: italic; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def hex_colour(rgba) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgba[:3])


def default_output_dir(run_dirs: list[str | Path]) -> Path:
    """One run: the run folder. Several: ``compare-<a>-vs-<b>...`` next to the first run folder."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) == 1:
        return paths[0]
    names = "-vs-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p.resolve().name) for p in paths)
    if len(names) > 80:
        names = names[:80].rstrip("-_.") + f"-and-more-{len(paths)}-runs"
    return paths[0].resolve().parent / f"compare-{names}"


# ------------------------------------------------------------------------------------------- summary


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_summary(run: RunData) -> dict[str, Any]:
    """The numbers of the summary table."""
    evals = sorted((r["step"], number(r.get("eval/accuracy"))) for r in run.evals if number(r.get("eval/accuracy")) is not None)
    step_times = [v for v in (number(r.get("time/step")) for r in run.train) if v is not None]
    tail = run.train[-10:]
    rollout_acc = [v for v in (number(r.get("accuracy/rollout")) for r in tail) if v is not None]
    rollout_reward = [v for v in (number(r.get("reward/mean")) for r in tail) if v is not None]
    return {
        "steps": run.steps_done,
        "max_steps": run.setting("train.max_steps"),
        "eval_first": evals[0] if evals else None,
        "eval_last": evals[-1] if evals else None,
        "rollout_accuracy_tail": _mean(rollout_acc),
        "rollout_reward_tail": _mean(rollout_reward),
        "mean_step_s": _mean(step_times),
        "total_train_s": float(sum(step_times)) if step_times else None,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str = "{:.3g}") -> str:
    return "–" if value is None else fmt.format(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _accuracy_change(first, last) -> str:
    if first is None:
        return "–"
    if first[0] == last[0]:
        return f"{first[1]:.1%} (step {first[0]})"
    change = (last[1] - first[1]) * 100
    cls = "up" if change > 0 else "down" if change < 0 else ""
    return (
        f"{first[1]:.1%} (step {first[0]}) → {last[1]:.1%} (step {last[0]}) "
        f"<span class='{cls}'>{change:+.1f} pts</span>"
    )


def summary_table(runs: list[RunData]) -> str:
    head = (
        "<tr><th class='l'>run</th><th class='l'>method</th><th>steps</th><th>held-out accuracy (final)</th>"
        "<th class='l'>held-out accuracy, first → last</th><th>rollout accuracy (last 10 steps)</th>"
        "<th>rollout reward (last 10 steps)</th><th>mean step time</th><th>train time</th></tr>"
    )
    rows = []
    for index, run in enumerate(runs):
        s = run_summary(run)
        steps = f"{s['steps']}" + (f" / {s['max_steps']}" if s["max_steps"] and s["max_steps"] != s["steps"] else "")
        rows.append(
            "<tr>"
            f"<td class='l run'><span class='swatch' style='background:{hex_colour(run_colour(index))}'></span>{esc(run.label)}</td>"
            f"<td class='l'>{esc(run.method or '–')}</td><td>{steps}</td>"
            f"<td>{_pct(s['eval_last'][1] if s['eval_last'] else None)}</td>"
            f"<td class='l'>{_accuracy_change(s['eval_first'], s['eval_last'])}</td>"
            f"<td>{_pct(s['rollout_accuracy_tail'])}</td><td>{_num(s['rollout_reward_tail'])}</td>"
            f"<td>{_duration(s['mean_step_s'])}</td><td>{_duration(s['total_train_s'])}</td>"
            "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


# ------------------------------------------------------------------------------------------- run cards

# config sections every run card shows after the method's own section (``config[method]``)
SHARED_SECTIONS = ("group", "grpo", "loss")


def card_sections(run: RunData) -> list[str]:
    """The config sections a run card lists: the one named after the method, then the shared ones."""
    names = [run.method, *SHARED_SECTIONS] if run.method else list(SHARED_SECTIONS)
    return [name for i, name in enumerate(names) if name not in names[:i] and isinstance(run.config.get(name), dict)]


def _compact(section: Any) -> str:
    if not isinstance(section, dict):
        return esc(section)
    return ", ".join(f"{esc(k)}={esc(v)}" for k, v in section.items() if v not in (None, {}, []))


def run_card(run: RunData, index: int) -> str:
    g = run.setting
    method = run.method or "–"
    items = [
        ("method", f"<b>{esc(method)}</b>"),
        ("model", f"<code>{esc(g('model.name_or_path', '–'))}</code> ({esc(g('model.dtype', '?'))})"),
        ("steps", f"{run.steps_done} done of {esc(g('train.max_steps', '?'))}"),
        ("learning rate", f"{esc(g('train.learning_rate', '?'))}, {esc(g('train.lr_scheduler', '?'))}, warm-up "
                          f"{esc(g('train.lr_warmup_steps', 0))}, max grad norm {esc(g('train.max_grad_norm', '?'))}"),
        ("batch", f"{esc(g('train.prompts_per_step', '?'))} prompts/step, micro-batch {esc(g('train.micro_batch_size', '?'))}"),
        ("data", f"<code>{esc(g('data.source', '?'))}</code>, {esc(g('eval.size', '?'))} held out"),
        ("rollouts", f"{esc(g('rollout.max_new_tokens', '?'))} new tokens, temperature {esc(g('rollout.temperature', '?'))}"),
        ("seed", esc(g("train.seed", "?"))),
    ]
    for section in card_sections(run):
        items.append((esc(section), f"<code>{_compact(run.config[section])}</code>"))
    items.append(("folder", f"<code>{esc(run.path.resolve())}</code>"))
    if not run.config:
        items.insert(0, ("note", "<span class='empty'>no config.yaml in this folder</span>"))
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    swatch = f"<span class='swatch' style='background:{hex_colour(run_colour(index))}'></span>"
    return f"<div class='card' id='run-{index}'><h3>{swatch}{esc(run.label)}</h3><dl>{body}</dl></div>"


# ------------------------------------------------------------------------------------------- analysis


def figure(path: Path, caption: str) -> str:
    return f"<figure><img alt='{esc(caption)}' src='{data_uri(path)}'><figcaption>{esc(caption)}</figcaption></figure>"


def token_spans(example: dict[str, Any]) -> str:
    """One response as HTML spans, background = probability change (the colours of shift-tokens.png)."""
    tokens, p_base, p_tuned = example.get("tokens", []), example.get("p_base", []), example.get("p_tuned", [])
    deltas = np.asarray(p_tuned, dtype=float) - np.asarray(p_base, dtype=float)
    vmax = colour_scale(deltas)
    spans = []
    for token, pb, pt, d in zip(tokens, p_base, p_tuned, deltas):
        rgba = shift_colour(float(d), vmax)
        dark = abs(d) / vmax > 0.65
        text = esc(token.replace("\n", "↵\n"))
        spans.append(
            f"<span style='background:{hex_colour(rgba)}{';color:#fff' if dark else ''}' "
            f"title='p_base {pb:.4f} → p_tuned {pt:.4f} (Δ {d:+.4f})'>{text}</span>"
        )
    lo, hi = hex_colour(shift_colour(-vmax, vmax)), hex_colour(shift_colour(vmax, vmax))
    legend = (
        f"<p class='legend'>Background: probability change of each token, <span class='swatch' style='background:{lo}'></span>"
        f"-{vmax:.3g} (less likely after tuning) to <span class='swatch' style='background:{hi}'></span>+{vmax:.3g} "
        "(more likely); hover a token for both probabilities.</p>"
    )
    return f"<div class='tokens'>{''.join(spans)}</div>{legend}"


def shift_section(path: Path) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return f"<p class='empty'>unreadable {esc(path)}</p>"
    rows = [
        ("base model", f"<code>{esc(data.get('base'))}</code>"),
        ("tuned model", f"<code>{esc(data.get('tuned'))}</code>"),
        ("responses", f"{data.get('responses')} from <code>{esc(data.get('source'))}</code>"),
        ("completion tokens", data.get("tokens")),
        ("mean token probability", f"{data.get('mean_p_base', 0):.4f} → {data.get('mean_p_tuned', 0):.4f}"),
        ("mean Δp, mean |Δp|", f"{data.get('mean_delta', 0):+.4f}, {data.get('mean_abs_delta', 0):.4f}"),
        ("tokens with |Δp| < 0.01", _pct(data.get("share_abs_delta_below_0.01"))),
        ("tokens with Δp > 0.1 / Δp < -0.1", f"{_pct(data.get('share_increased_over_0.1'))} / {_pct(data.get('share_decreased_over_0.1'))}"),
        ("mean token entropy", f"{data.get('mean_entropy_base', 0):.3f} → {data.get('mean_entropy_tuned', 0):.3f} nats"),
    ]
    table = "<table>" + "".join(f"<tr><th class='l'>{k}</th><td class='l'>{v}</td></tr>" for k, v in rows) + "</table>"
    example = data.get("example") or {}
    shown = ""
    if example.get("tokens"):
        shown = (
            f"<h3 style='margin-top:16px'>Response {esc(example.get('id'))}, token by token</h3>"
            + token_spans(example)
        )
    return table + shown


def analysis_blocks(folder: Path, heading: str) -> str:
    """Everything ``hybridrft analyze`` wrote into ``folder``: the shift summary and every PNG."""
    if not folder.is_dir():
        return ""
    pngs = sorted(folder.glob("*.png"), key=lambda p: (list(ANALYSIS_TITLES).index(p.name) if p.name in ANALYSIS_TITLES else 99, p.name))
    shift = folder / "shift.json"
    if not pngs and not shift.is_file():
        return ""
    parts = [f"<h3>{esc(heading)}</h3>"]
    if shift.is_file():
        parts.append(shift_section(shift))
    for png in pngs:
        parts.append(figure(png, f"{ANALYSIS_TITLES.get(png.name, png.stem)} — {png}"))
    return "".join(parts)


# ------------------------------------------------------------------------------------------- the page


def render_report(runs: list[RunData], plots: list[Path], analysis_dirs: list[tuple[Path, str]], title: str) -> str:
    from hybridrft import __version__

    def keys(panel: str) -> str:
        return ", ".join(panel_metric_keys(panel, runs))

    curves = "".join(figure(p, f"metrics.jsonl keys: {keys(p.stem)}") for p in plots)
    curves = curves or "<p class='empty'>no metrics to plot</p>"
    analysis = "".join(analysis_blocks(folder, heading) for folder, heading in analysis_dirs)
    if not analysis:
        analysis = (
            "<p class='empty'>none yet: <code>hybridrft analyze entropy RUN...</code> and "
            "<code>hybridrft analyze shift BASE TUNED --responses RUN</code> write diagnostics that appear here.</p>"
        )
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (("summary", "Summary"), ("runs", "Runs"), ("curves", "Training curves"), ("analysis", "Analysis")))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body><main>
<h1>{esc(title)}</h1>
<p class="meta">hybridrft {esc(__version__)} report, generated {generated}; {len(runs)} run{'s' if len(runs) != 1 else ''}.</p>
<nav>{nav}</nav>
<h2 id="summary">Summary</h2>
{summary_table(runs)}
<h2 id="runs">Runs</h2>
<div class="runs">{''.join(run_card(run, i) for i, run in enumerate(runs))}</div>
<h2 id="curves">Training curves</h2>
{curves}
<h2 id="analysis">Analysis</h2>
{analysis}
</main></body>
</html>
"""


def write_report(run_dirs: list[str | Path], output_dir: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write ``report.html`` and ``plots/*.png`` into ``output_dir`` (default: ``default_output_dir``).

    Raises ``RunFolderError`` (a ``ValueError``) for a folder that is not a run folder.
    """
    if not run_dirs:
        raise ValueError("no run folder given")
    runs = load_runs(list(run_dirs))
    out = Path(output_dir) if output_dir is not None else default_output_dir(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_runs(runs, out / "plots")
    analysis_dirs = [(run.path / "analysis", f"{run.label}: analysis/") for run in runs]
    if not any(out.resolve() == run.path.resolve() for run in runs):
        analysis_dirs.insert(0, (out / "analysis", f"All runs: {out / 'analysis'}/"))
    if title is None:
        title = f"Training report: {runs[0].label}" if len(runs) == 1 else "Training report: " + " vs ".join(r.label for r in runs)
    path = out / "report.html"
    path.write_text(render_report(runs, plots, analysis_dirs, title), encoding="utf-8")
    return path
