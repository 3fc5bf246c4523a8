"""Token-probability shift between two models on the same responses (SRFT paper, Fig. 2).

Both models score the same prompt + completion token ids teacher-forced, with
``hybridrft.ops.token_logprobs_and_entropy``; the shift of a completion token is
``p_tuned - p_base`` with ``p = exp(log pi(token | prompt, earlier tokens))``. The paper's finding is
that SFT moves many token probabilities a lot while RL moves few; the histogram (log-scale counts)
and the per-token colouring of one response show which.

Responses come from:

- a run folder: its latest ``eval/generations-step-N.jsonl`` (or pass that file). Those records carry
  the held-out problem's ``id`` but not the prompt, so the held-out problems are rebuilt from the
  run's ``config.yaml`` (same data source, held-out split and seed as the trainer) and rendered
  with the chat template, system prompt and answer instruction of the run, exactly as in training;
- any JSONL file whose records have ``prompt`` (the problem: text or chat messages, rendered the
  same way; or, with ``raw_prompts``, the exact model input text) and ``completion``.

A completion is tokenized without special tokens and gets the EOS token appended unless its record
says ``"truncated": true`` (the trainer's generations end with EOS unless cut at the budget).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrft.data import DEFAULT_ANSWER_INSTRUCTION, Example, render_prompt
from hybridrft.ops import token_logprobs_and_entropy
from hybridrft.report.runs import RunFolderError, read_jsonl

logger = logging.getLogger(__name__)

GENERATIONS = re.compile(r"generations-step-(\d+)\.jsonl$")


class ResponsesError(ValueError):
    """Responses that cannot be turned into prompt + completion token ids; the message says why."""


@dataclass
class Response:
    id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenShift:
    """One response's completion tokens with their probabilities under both models."""

    id: str
    token_ids: list[int]
    tokens: list[str]
    p_base: list[float]
    p_tuned: list[float]
    entropy_base: list[float]
    entropy_tuned: list[float]

    @property
    def delta(self) -> np.ndarray:
        return np.asarray(self.p_tuned) - np.asarray(self.p_base)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "token_ids": self.token_ids,
            "tokens": self.tokens,
            "p_base": self.p_base,
            "p_tuned": self.p_tuned,
            "entropy_base": self.entropy_base,
            "entropy_tuned": self.entropy_tuned,
        }


@dataclass
class ShiftResult:
    base: str
    tuned: str
    source: str
    responses: list[TokenShift]

    def deltas(self) -> np.ndarray:
        if not self.responses:
            return np.zeros(0)
        return np.concatenate([r.delta for r in self.responses])

    def summary(self) -> dict[str, Any]:
        d = self.deltas()
        p_base = np.concatenate([r.p_base for r in self.responses]) if self.responses else np.zeros(0)
        p_tuned = np.concatenate([r.p_tuned for r in self.responses]) if self.responses else np.zeros(0)
        h_base = np.concatenate([r.entropy_base for r in self.responses]) if self.responses else np.zeros(0)
        h_tuned = np.concatenate([r.entropy_tuned for r in self.responses]) if self.responses else np.zeros(0)
        n = max(len(d), 1)
        with np.errstate(divide="ignore"):
            dlogp = np.log(np.maximum(p_tuned, 1e-45)) - np.log(np.maximum(p_base, 1e-45))
        return {
            "base": self.base,
            "tuned": self.tuned,
            "source": self.source,
            "responses": len(self.responses),
            "tokens": int(len(d)),
            "mean_p_base": float(p_base.mean()) if len(d) else 0.0,
            "mean_p_tuned": float(p_tuned.mean()) if len(d) else 0.0,
            "mean_delta": float(d.mean()) if len(d) else 0.0,
            "mean_abs_delta": float(np.abs(d).mean()) if len(d) else 0.0,
            "mean_delta_logp": float(dlogp.mean()) if len(d) else 0.0,
            "share_abs_delta_below_0.01": float((np.abs(d) < 0.01).sum() / n),
            "share_increased_over_0.1": float((d > 0.1).sum() / n),
            "share_decreased_over_0.1": float((d < -0.1).sum() / n),
            "mean_entropy_base": float(h_base.mean()) if len(d) else 0.0,
            "mean_entropy_tuned": float(h_tuned.mean()) if len(d) else 0.0,
        }


# ---------------------------------------------------------------------------------------- responses


def latest_generations(run_dir: Path) -> Path:
    """The run's ``eval/generations-step-N.jsonl`` with the largest N."""
    found = [(int(m.group(1)), p) for p in (run_dir / "eval").glob("generations-step-*.jsonl") if (m := GENERATIONS.search(p.name))]
    if not found:
        raise ResponsesError(f"{run_dir} has no eval/generations-step-N.jsonl; pass a JSONL file with prompt and completion fields")
    return max(found)[1]


def run_dir_of(path: Path) -> Path | None:
    """The run folder holding a responses file (``RUN/eval/generations-...`` or ``RUN/x.jsonl``)."""
    for parent in (path.parent.parent, path.parent):
        if (parent / "config.yaml").is_file() and (parent / "metrics.jsonl").is_file():
            return parent
    return None


def heldout_examples(run_dir: Path) -> tuple[list[Example], Any]:
    """Rebuild a run's held-out problems from its ``config.yaml``, as the trainer made them.

    Uses the trainer's own definition (``hybridrft.data.load_run_examples``). Returns the
    examples and the run's ``DataConfig``.
    """
    from hybridrft.config import ConfigError, load_config
    from hybridrft.data import load_run_examples

    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as err:
        raise ResponsesError(f"cannot read {run_dir / 'config.yaml'} to rebuild the prompts: {err}") from None
    data = config.data
    try:
        return load_run_examples(config)[1], data
    except (OSError, ValueError) as err:
        raise ResponsesError(
            f"cannot rebuild the held-out prompts of {run_dir} from its data source ({err}); "
            "pass a JSONL file with prompt and completion fields instead"
        ) from None


def load_responses(
    source: str | Path,
    tokenizer,
    *,
    limit: int | None = None,
    raw_prompts: bool = False,
) -> tuple[list[Response], Path]:
    """Prompt and completion token ids of every response in ``source`` (a run folder or a JSONL file).

    Returns the responses and the file they were read from.
    """
    source = Path(source)
    if source.is_dir():
        if not (source / "metrics.jsonl").is_file() and not (source / "eval").is_dir():
            raise ResponsesError(f"{source} is neither a run folder nor a JSONL file")
        source = latest_generations(source)
    elif not source.is_file():
        raise ResponsesError(f"responses not found: {source}")
    try:
        records = read_jsonl(source)
    except RunFolderError as err:
        raise ResponsesError(str(err)) from None
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ResponsesError(f"{source} holds no responses")

    run_dir = run_dir_of(source)
    system_prompt, instruction = None, DEFAULT_ANSWER_INSTRUCTION
    examples: dict[str, Example] = {}
    needs_run = any("prompt" not in r for r in records)
    if run_dir is not None:
        from hybridrft.config import ConfigError, load_config

        try:
            data = load_config(run_dir / "config.yaml").data
            system_prompt, instruction = data.system_prompt, data.answer_instruction
        except ConfigError as err:  # heldout_examples reports it when the prompts must be rebuilt
            logger.warning("cannot read %s (%s); rendering prompts with the default settings", run_dir / "config.yaml", err)
    if needs_run:
        if run_dir is None or not all("id" in r for r in records):
            raise ResponsesError(
                f"{source}: records need a 'prompt' field (the problem, or with --raw-prompts the exact "
                "model input) next to 'completion'; records without one are understood only in a run "
                "folder's eval/generations-step-N.jsonl, where the prompt is rebuilt from the run's config "
                "(samples.jsonl does not record its prompts)"
            )
        held, _ = heldout_examples(run_dir)
        examples = {e.id: e for e in held}

    eos = tokenizer.eos_token_id
    responses = []
    for number, record in enumerate(records, start=1):
        completion = record.get("completion", record.get("response"))
        if not isinstance(completion, str):
            raise ResponsesError(f"{source} record {number}: no 'completion' text")
        rid = str(record.get("id", number))
        if "prompt" in record:
            prompt = record["prompt"]
            if raw_prompts:
                if not isinstance(prompt, str):
                    raise ResponsesError(f"{source} record {number}: --raw-prompts needs 'prompt' as text")
                text = prompt
            else:
                example = Example(id=rid, prompt=prompt, demonstrations=[], answer=str(record.get("answer", "")))
                text = render_prompt(tokenizer, example, system_prompt=system_prompt, answer_instruction=instruction)
        else:
            example = examples.get(str(record["id"]))
            if example is None:
                raise ResponsesError(f"{source} record {number}: id {record['id']!r} is not a held-out problem of {run_dir}")
            text = render_prompt(tokenizer, example, system_prompt=system_prompt, answer_instruction=instruction)
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
        if not record.get("truncated", False) and eos is not None:
            completion_ids = completion_ids + [eos]
        if not completion_ids:
            continue
        responses.append(Response(id=rid, prompt_ids=prompt_ids, completion_ids=completion_ids, record=record))
    return responses, source


# ---------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def completion_token_probs(
    model,
    responses: list[Response],
    *,
    pad_id: int,
    batch_size: int = 8,
    chunk_size: int = 128,
) -> list[tuple[list[float], list[float]]]:
    """Teacher-forced ``(probabilities, entropies)`` of each response's completion tokens.

    Sequences are right-padded, so every real token keeps its position and, with causal attention,
    the padding after it changes nothing.
    """
    device = next(model.parameters()).device
    out: list[tuple[list[float], list[float]]] = []
    for start in range(0, len(responses), batch_size):
        chunk = responses[start : start + batch_size]
        seqs = [r.prompt_ids + r.completion_ids for r in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logp, entropy = token_logprobs_and_entropy(model, ids.to(device), mask.to(device), chunk_size=chunk_size)
        logp, entropy = logp.float().cpu(), entropy.float().cpu()
        for row, r in enumerate(chunk):
            lo, hi = len(r.prompt_ids), len(r.prompt_ids) + len(r.completion_ids)
            out.append((logp[row, lo:hi].exp().tolist(), entropy[row, lo:hi].tolist()))
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def token_shift(
    base: str,
    tuned: str,
    responses_source: str | Path,
    *,
    limit: int | None = 64,
    raw_prompts: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "float32",
) -> ShiftResult:
    """Score ``responses_source`` under ``base`` and ``tuned`` (names or folders, as ``load_policy``
    takes); one model at a time, so only one is in memory. Raises ``ModelNotFoundError`` for a
    missing model and ``ResponsesError`` for unusable responses."""
    from hybridrft.models import load_policy, load_tokenizer

    tokenizer = load_tokenizer(tuned)
    base_tokenizer = load_tokenizer(base)
    if base_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ResponsesError(f"{base} and {tuned} have different vocabularies; a token-level shift needs one tokenizer")
    responses, path = load_responses(responses_source, tokenizer, limit=limit, raw_prompts=raw_prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = {}
    for role, name in (("base", base), ("tuned", tuned)):
        model = load_policy(name, dtype=dtype).to(_device(device)).eval()
        scores[role] = completion_token_probs(model, responses, pad_id=pad_id, batch_size=batch_size)
        del model
    shifts = []
    for k, r in enumerate(responses):
        shifts.append(
            TokenShift(
                id=r.id,
                token_ids=r.completion_ids,
                tokens=[tokenizer.decode([t]) for t in r.completion_ids],
                p_base=scores["base"][k][0],
                p_tuned=scores["tuned"][k][0],
                entropy_base=scores["base"][k][1],
                entropy_tuned=scores["tuned"][k][1],
            )
        )
    return ShiftResult(base=str(base), tuned=str(tuned), source=str(path), responses=shifts)


# ---------------------------------------------------------------------------------------- outputs


def shift_colour(delta: float, vmax: float) -> tuple[float, float, float, float]:
    """Red for a decrease, blue for an increase, white for none (``RdBu`` on ``[-vmax, vmax]``)."""
    import matplotlib

    norm = 0.5 + 0.5 * max(-1.0, min(1.0, delta / vmax)) if vmax > 0 else 0.5
    return matplotlib.colormaps["RdBu"](norm)


def colour_scale(deltas: np.ndarray) -> float:
    """The symmetric colour range for one response: its largest change, at least 0.05."""
    return max(float(np.abs(deltas).max()) if len(deltas) else 0.0, 0.05)


def plot_shift_histogram(result: ShiftResult, path: str | Path, *, bins: int = 41) -> Path:
    """Fig. 2b: counts of per-token probability changes on ``[-1, 1]``, log-scale y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.deltas()
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(d, -1.0, 1.0), bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    colours = [shift_colour(c, 1.0) if abs(c) > 1e-9 else (0.6, 0.6, 0.6, 1.0) for c in centres]
    ax.bar(centres, np.where(counts > 0, counts, np.nan), width=edges[1] - edges[0], color=colours, edgecolor="#333333", linewidth=0.4)
    ax.set_yscale("log")
    ax.set_xlim(-1, 1)
    ax.set_xlabel("probability change of a response token   p_tuned - p_base")
    ax.set_ylabel("tokens (log scale)")
    ax.grid(alpha=0.3, which="both", axis="y")
    s = result.summary()
    ax.set_title(
        f"Token probability shift: {result.tuned} vs {result.base}\n"
        f"{s['tokens']} tokens in {s['responses']} responses; |Δp| < 0.01: {s['share_abs_delta_below_0.01']:.1%}, "
        f"Δp > 0.1: {s['share_increased_over_0.1']:.1%}, Δp < -0.1: {s['share_decreased_over_0.1']:.1%}",
        fontsize=9.5,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _visible(token: str) -> str:
    return token.replace("\t", "→").replace("\r", "")


def plot_token_colours(shift: TokenShift, path: str | Path, *, title: str = "", columns: int = 96, max_tokens: int = 600) -> Path:
    """Fig. 2a: the response's tokens on a background coloured by their probability change.

    Laid out in a monospace font on a grid of character cells (one cell per character), wrapping at
    ``columns`` characters and at newlines (shown as ``↵``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    deltas = shift.delta[:max_tokens]
    vmax = colour_scale(deltas)
    cells: list[tuple[int, int, str, float]] = []  # (row, col, text, delta)
    row = col = 0
    for token, delta in zip(shift.tokens[:max_tokens], deltas):
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
    fig.text(0.5, 1 - 0.3 / total_h, title or f"Per-token probability change, response {shift.id}", ha="center", va="center", fontsize=11, fontweight="bold")
    cax = fig.add_axes((0.25, 0.55 / total_h, 0.5, 0.16 / total_h))
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(-vmax, vmax), cmap="RdBu")
    bar = fig.colorbar(sm, cax=cax, orientation="horizontal")
    bar.set_label("p_tuned - p_base   (red: less likely after tuning, blue: more likely)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def histogram_data(result: ShiftResult, bins: int = 41) -> dict[str, list]:
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(result.deltas(), -1.0, 1.0), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def write_shift(result: ShiftResult, out_dir: str | Path, *, example: int = 0, bins: int = 41) -> list[Path]:
    """Write ``shift-histogram.png``, ``shift-tokens.png`` (response ``example``), ``shift.json``
    (summary, histogram, the example's tokens: what the HTML report shows) and ``shift-tokens.jsonl``
    (every response's tokens with both probabilities and entropies)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not result.responses:
        raise ResponsesError(f"no response with completion tokens in {result.source}")
    if not 0 <= example < len(result.responses):
        raise ResponsesError(f"--example {example} is out of range: {len(result.responses)} responses")
    shown = result.responses[example]
    written = [
        plot_shift_histogram(result, out_dir / "shift-histogram.png", bins=bins),
        plot_token_colours(shown, out_dir / "shift-tokens.png",
                           title=f"Per-token probability change, response {shown.id} ({example + 1} of {len(result.responses)})"),
    ]
    summary = {**result.summary(), "histogram": histogram_data(result, bins), "example": {"index": example, **shown.to_dict()}}
    (out_dir / "shift.json").write_text(json.dumps(summary, indent=1))
    with (out_dir / "shift-tokens.jsonl").open("w") as f:
        for r in result.responses:
            f.write(json.dumps(r.to_dict()) + "\n")
    return [*written, out_dir / "shift.json", out_dir / "shift-tokens.jsonl"]
