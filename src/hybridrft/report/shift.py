"""Token-probability shift between two models (SRFT paper, Fig. 2): the plots.

The scoring is :func:`hybridrft.eval.token_shift`, and :func:`hybridrft.eval.write_shift_data`
writes its results to ``shift.json`` (summary, histogram counts, the example response's tokens and
probabilities) and ``shift-tokens.jsonl``. This module only reads ``shift.json`` and draws it:
``shift-histogram.png`` (Fig. 2b) and ``shift-tokens.png`` (Fig. 2a); the HTML report colours the
example's tokens with the same colours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hybridrft.report.runs import RunFolderError


def shift_colour(delta: float, vmax: float) -> tuple[float, float, float, float]:
    """Red for a decrease, blue for an increase, white for none (``RdBu`` on ``[-vmax, vmax]``)."""
    import matplotlib

    norm = 0.5 + 0.5 * max(-1.0, min(1.0, delta / vmax)) if vmax > 0 else 0.5
    return matplotlib.colormaps["RdBu"](norm)


def colour_scale(deltas: np.ndarray) -> float:
    """The symmetric colour range for one response: its largest change, at least 0.05."""
    return max(float(np.abs(deltas).max()) if len(deltas) else 0.0, 0.05)


def plot_shift_histogram(summary: dict[str, Any], path: str | Path) -> Path:
    """Fig. 2b: counts of per-token probability changes on ``[-1, 1]``, log-scale y, from the
    ``summary`` of ``shift.json`` (its ``histogram`` and statistics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(summary["histogram"]["edges"], dtype=float)
    counts = np.asarray(summary["histogram"]["counts"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    colours = [shift_colour(c, 1.0) if abs(c) > 1e-9 else (0.6, 0.6, 0.6, 1.0) for c in centres]
    ax.bar(centres, np.where(counts > 0, counts, np.nan), width=edges[1] - edges[0], color=colours, edgecolor="#333333", linewidth=0.4)
    ax.set_yscale("log")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("probability change of a response token   p_tuned - p_base")
    ax.set_ylabel("tokens (log scale)")
    ax.grid(alpha=0.3, which="both", axis="y")
    s = summary
    ax.set_title(
        f"Token probability shift: {s['tuned']} vs {s['base']}\n"
        f"{s['tokens']} tokens in {s['responses']} responses; |Δp| < 0.01: {s['share_abs_delta_below_0.01']:.1%}, "
        f"Δp > 0.1: {s['share_increased_over_0.1']:.1%}, Δp < -0.1: {s['share_decreased_over_0.1']:.1%}",
        fontsize=9.5,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _visible(token: str) -> str:
    return token.replace("\t", "→").replace("\r", "")


def plot_token_colours(shift: dict[str, Any], path: str | Path, *, title: str = "", columns: int = 96, max_tokens: int = 600) -> Path:
    """Fig. 2a: the response's tokens on a background coloured by their probability change.

    ``shift`` is one response as ``shift.json`` holds it: ``id``, ``tokens``, ``p_base``, ``p_tuned``.

    Laid out in a monospace font on a grid of character cells (one cell per character), wrapping at
    ``columns`` characters and at newlines (shown as ``↵``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    deltas = token_deltas(shift)[:max_tokens]
    vmax = colour_scale(deltas)
    cells: list[tuple[int, int, str, float]] = []  # (row, col, text, delta)
    row = col = 0
    for token, delta in zip(shift["tokens"][:max_tokens], deltas):
        parts = _visible(token).split("\n")
        for k, part in enumerate(parts):
            text = part + ("↵" if k < len(parts) - 1 else "")
            if not text and k == len(parts) - 1:
                continue
            if col and len(text) <= columns and col + len(text) > columns:
                row, col = row + 1, 0  # a token that fits on a line is not split
            while text:
                room = columns - col
                if room <= 0:
                    row, col = row + 1, 0
                    continue
                piece, text = text[:room], text[room:]
                cells.append((row, col, piece, float(delta)))
                col += len(piece)
            if k < len(parts) - 1:
                row, col = row + 1, 0
    rows = row + 1
    fontsize = 10
    char_w, line_h = 0.6 * fontsize / 72, 1.55 * fontsize / 72  # inches (DejaVu Sans Mono advance 0.6 em)
    width, text_h = columns * char_w + 0.4, rows * line_h
    head, foot = 0.55, 1.0
    fig = plt.figure(figsize=(width, text_h + head + foot))
    total_h = text_h + head + foot
    ax = fig.add_axes((0.2 / width, foot / total_h, columns * char_w / width, text_h / total_h))
    ax.set_xlim(0, columns)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    for r, c, piece, delta in cells:
        ax.add_patch(Rectangle((c, r + 0.06), len(piece), 0.88, facecolor=shift_colour(delta, vmax), edgecolor="none"))
        dark = abs(delta) / vmax > 0.65
        ax.text(c, r + 0.5, piece, fontsize=fontsize, family="DejaVu Sans Mono", va="center", ha="left", color="white" if dark else "black")
    fig.text(0.5, 1 - 0.3 / total_h, title or f"Per-token probability change, response {shift['id']}", ha="center", va="center", fontsize=11, fontweight="bold")
    cax = fig.add_axes((0.25, 0.55 / total_h, 0.5, 0.16 / total_h))
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(-vmax, vmax), cmap="RdBu")
    bar = fig.colorbar(sm, cax=cax, orientation="horizontal")
    bar.set_label("p_tuned - p_base   (red: less likely after tuning, blue: more likely)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def token_deltas(shift: dict[str, Any]) -> np.ndarray:
    """``p_tuned - p_base`` of each token of one response."""
    return np.asarray(shift["p_tuned"]) - np.asarray(shift["p_base"])


def read_shift(folder: str | Path) -> dict[str, Any]:
    """The ``shift.json`` of ``folder``; a missing or unreadable one is a :class:`RunFolderError`."""
    path = Path(folder) / "shift.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path} not found; `hybridrft analyze shift` writes it") from None
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path} is not valid JSON: {err.msg}") from None


def draw_shift(folder: str | Path) -> list[Path]:
    """Draw ``shift-histogram.png`` and ``shift-tokens.png`` (the example response) into ``folder``
    from its ``shift.json``."""
    folder = Path(folder)
    summary = read_shift(folder)
    shown = summary["example"]
    return [
        plot_shift_histogram(summary, folder / "shift-histogram.png"),
        plot_token_colours(shown, folder / "shift-tokens.png",
                           title=f"Per-token probability change, response {shown['id']} ({shown['index'] + 1} of {summary['responses']})"),
    ]
