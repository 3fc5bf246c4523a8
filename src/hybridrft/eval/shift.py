"""Token-probability shift between two models on the same responses (SRFT paper, Fig. 2): the scoring.

Both models score the same prompt + completion token ids teacher-forced, with
``hybridrft.ops.token_logprobs_and_entropy``; the shift of a completion token is
``p_tuned - p_base`` with ``p = exp(log pi(token | prompt, earlier tokens))``. The paper's finding is
that SFT moves many token probabilities a lot while RL moves few; the histogram (log-scale counts)
and the per-token colouring of one response show which.

Responses come from:

- a run folder: its latest ``eval/generations-step-N.jsonl`` (or pass that file), or the
  ``generations/<benchmark>.jsonl`` of ``hybridrft eval``: generation records
  (:mod:`hybridrft.eval.records`) with the problem's ``prompt``, rendered with the chat template,
  system prompt and answer instruction of the run (the defaults outside a run folder), exactly as in
  training. Files of earlier versions whose training records have no prompt: the held-out problems
  are rebuilt from the run's ``config.yaml`` (same data source, held-out split and seed as the trainer);
- any JSONL file whose records have ``prompt`` (the problem: text or chat messages, rendered the
  same way; or, with ``raw_prompts``, the exact model input text) and ``completion``.

:func:`write_shift_data` writes ``shift.json`` and ``shift-tokens.jsonl``; the plots are drawn from
them by :func:`hybridrft.report.draw_shift`.

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
from hybridrft.eval.choice import CHOICE_INSTRUCTION
from hybridrft.eval.records import GenerationFileError, read_records
from hybridrft.ops import token_logprobs_and_entropy

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
        records = read_records(source, partial_last_line=False)
    except GenerationFileError as err:
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
                own_system, own_instruction = _eval_prompt_settings(record, system_prompt, instruction)
                text = render_prompt(tokenizer, example, system_prompt=own_system, answer_instruction=own_instruction)
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


def _eval_prompt_settings(record: dict[str, Any], system_prompt: str | None, instruction: str) -> tuple[str | None, str]:
    """The system prompt and answer instruction a record's prompt was rendered with: a ``hybridrft
    eval`` record names its system prompt in ``settings`` and is multiple choice when it has
    ``choices``; any other record was rendered with the run's (or the default) settings."""
    settings = record.get("settings")
    if not isinstance(settings, dict):
        return system_prompt, instruction
    return settings.get("system_prompt"), CHOICE_INSTRUCTION if record.get("choices") else DEFAULT_ANSWER_INSTRUCTION


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


def histogram_data(result: ShiftResult, bins: int = 41) -> dict[str, list]:
    """Counts of per-token probability changes in ``bins`` equal bins on ``[-1, 1]``."""
    edges = np.linspace(-1.0, 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(result.deltas(), -1.0, 1.0), bins=edges)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def write_shift_data(result: ShiftResult, out_dir: str | Path, *, example: int = 0, bins: int = 41) -> list[Path]:
    """Write ``shift.json`` (summary, histogram, the tokens of response ``example``: what the plots
    and the HTML report show) and ``shift-tokens.jsonl`` (every response's tokens with both
    probabilities and entropies)."""
    out_dir = Path(out_dir)
    if not result.responses:
        raise ResponsesError(f"no response with completion tokens in {result.source}")
    if not 0 <= example < len(result.responses):
        raise ResponsesError(f"--example {example} is out of range: {len(result.responses)} responses")
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = result.responses[example]
    summary = {**result.summary(), "histogram": histogram_data(result, bins), "example": {"index": example, **shown.to_dict()}}
    (out_dir / "shift.json").write_text(json.dumps(summary, indent=1))
    with (out_dir / "shift-tokens.jsonl").open("w") as f:
        for r in result.responses:
            f.write(json.dumps(r.to_dict()) + "\n")
    return [out_dir / "shift.json", out_dir / "shift-tokens.jsonl"]
