"""Checks of a run's data against its method and its model, made before the model loads.

What they catch would otherwise surface at step 1 or later, as a traceback: a method that trains on
demonstrations given rows without them, and sequences longer than the model has positions for
(transformers models index their position tables out of range, or silently extrapolate).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hybridrft.data import Example

logger = logging.getLogger(__name__)


def keep_examples_with_demonstrations(examples: list[Example], *, on_error: str, method: str, source: str) -> list[Example]:
    """The examples that have a demonstration. Those without one are an error naming them, or, with
    ``data.on_error=skip``, dropped and counted in one warning."""
    missing = [example.id for example in examples if not example.demonstrations]
    if not missing:
        return examples
    first = ", ".join(map(str, missing[:5]))
    if on_error != "skip":
        raise ValueError(
            f"method {method} trains on demonstrations, but {len(missing)} of {len(examples)} training examples in "
            f"{source} have none (first: {first}); map the demonstration column (data.format / data.fields.demonstration), "
            "or set data.on_error=skip to drop those rows"
        )
    logger.warning("skipped %d of %d training examples from %s without a demonstration (method %s trains on them; "
                   "first: %s)", len(missing), len(examples), source, method, first)
    kept = [example for example in examples if example.demonstrations]
    if not kept:
        raise ValueError(f"no training example in {source} has a demonstration, and method {method} trains on them")
    return kept


def model_positions(name_or_path: str | None, model=None) -> int | None:
    """The model's ``max_position_embeddings`` (of its text model), read from its config without
    loading weights; None when the config does not say (then nothing is checked)."""
    try:
        if model is not None:
            config = model.config
        else:
            from transformers import AutoConfig

            from hybridrft.models.loading import resolve_model_path

            config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    except (OSError, ValueError) as error:  # e.g. a LoRA adapter folder: its base says, checked when it loads
        logger.debug("no context length read for %s: %s", name_or_path, error)
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def demonstration_lengths(tokenizer, examples: list[Example], count: int, max_tokens: int) -> list[int]:
    """Per example, the longest of its first ``count`` demonstrations in tokens as the trainer builds
    them (EOS appended, cut at ``max_tokens``: ``rollout.demonstration_sequences``)."""
    texts = [[ex.demonstrations[j % len(ex.demonstrations)] for j in range(count)] for ex in examples]
    flat = [text for group in texts for text in group]
    ids = tokenizer(flat, add_special_tokens=False).input_ids if flat else []
    lengths, k = [], 0
    for group in texts:
        lengths.append(max(min(len(ids[k + j]) + 1, max_tokens) for j in range(len(group))))
        k += len(group)
    return lengths


def check_context_length(
    *, positions: int | None, model_name: str, train_prompt_ids: list[list[int]], eval_prompt_ids: list[list[int]],
    rollout_tokens: int | None, eval_tokens: int, demo_lengths: list[int] | None, demo_example_ids: list[str] | None = None,
) -> None:
    """Every sequence a run builds fits the model's positions: the longest prompt plus the rollout
    budget (``rollout_tokens``; None for a method without rollouts) and plus the evaluation budget,
    and each training prompt plus its demonstration. Raises ``ValueError`` naming the numbers and
    the setting that would make it fit."""
    if positions is None:
        return
    limit = f"{model_name} has max_position_embeddings={positions}"
    longest_train = max((len(ids) for ids in train_prompt_ids), default=0)
    if rollout_tokens is not None and longest_train + rollout_tokens > positions:
        raise ValueError(
            f"rollouts would not fit the model's context: the longest training prompt has {longest_train} tokens and "
            f"rollout.max_new_tokens={rollout_tokens}, {longest_train + rollout_tokens} positions, but {limit}. Lower "
            f"rollout.max_new_tokens to at most {positions - longest_train}, or data.max_prompt_tokens (longer prompts "
            f"are skipped) to at most {max(positions - rollout_tokens, 0)}"
        )
    longest_eval = max((len(ids) for ids in eval_prompt_ids), default=0)
    if eval_prompt_ids and longest_eval + eval_tokens > positions:
        raise ValueError(
            f"evaluation would not fit the model's context: the longest held-out prompt has {longest_eval} tokens and "
            f"{eval_tokens} new tokens are allowed (eval.max_new_tokens, default rollout.max_new_tokens), "
            f"{longest_eval + eval_tokens} positions, but {limit}. Lower eval.max_new_tokens to at most "
            f"{positions - longest_eval}"
        )
    if demo_lengths:
        totals = [len(p) + d for p, d in zip(train_prompt_ids, demo_lengths)]
        worst = max(range(len(totals)), key=totals.__getitem__)
        if totals[worst] > positions:
            which = f"example {demo_example_ids[worst]}" if demo_example_ids else f"training example {worst}"
            raise ValueError(
                f"demonstrations would not fit the model's context: {which} has a {len(train_prompt_ids[worst])}-token "
                f"prompt and a {demo_lengths[worst]}-token demonstration, {totals[worst]} positions, but {limit}. Lower "
                f"data.max_demo_tokens (longer demonstrations are cut) to at most {max(positions - longest_train, 1)}, "
                "or data.max_prompt_tokens"
            )


def describe_model(name_or_path: str | None, model=None) -> str:
    if model is not None:
        return f"the model given ({type(model).__name__})"
    return f"model {name_or_path}" if not Path(str(name_or_path)).exists() else f"the model in {name_or_path}"


def check_same_tokenizer(old, new, old_name: str, new_name: str) -> None:
    """Refuse a tokenizer whose vocabulary or special tokens differ from another's: the one a run
    trained with (a moved model), or the student's (a distillation teacher)."""
    if old.get_vocab() != new.get_vocab():
        raise ValueError(f"the tokenizer of {new_name} differs from that of {old_name} (vocabulary of {len(new)} vs "
                         f"{len(old)} tokens, or different ids): the two would read different tokens under the same ids")
    special = lambda t: {k: str(v) for k, v in t.special_tokens_map.items()}  # noqa: E731
    if special(old) != special(new):
        raise ValueError(f"the special tokens of {new_name} ({special(new)}) differ from those of {old_name} "
                         f"({special(old)})")


def warn_if_little_space(folder: Path, model) -> None:
    """Warn when the output folder's file system has less room than two checkpoints need (a new one is
    written before the oldest is removed): the weights plus AdamW's two float32 moments per trainable
    parameter, an estimate."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(p.numel() * 8 for p in model.parameters() if p.requires_grad)
    needed, free = 2 * (weights + moments), shutil.disk_usage(folder).free
    if free < needed:
        logger.warning("%s has %.2f GiB free, and two checkpoints need about %.2f GiB: the run may stop at a save "
                       "(train.keep_checkpoints sets how many are kept)", folder, free / 2**30, needed / 2**30)
