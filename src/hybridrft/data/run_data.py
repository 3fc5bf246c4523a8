"""The training and held-out examples of a run, from its config: one definition for the trainer and
for every tool that rebuilds a run's prompts later (reports, diagnostics)."""

from __future__ import annotations

from hybridrft.config import Config
from hybridrft.data.arithmetic import arithmetic_splits
from hybridrft.data.example import Example
from hybridrft.data.loaders import load_examples, split_holdout

BUILTIN_ARITHMETIC = "builtin:arithmetic"


def load_run_examples(config: Config) -> tuple[list[Example], list[Example]]:
    """``(train, held_out)``: the built-in task's two splits, ``data.source`` plus
    ``data.eval_source``, or ``eval.size`` examples held out of ``data.source`` with ``train.seed``."""
    data = config.data
    if data.source == BUILTIN_ARITHMETIC:
        return arithmetic_splits(data.builtin_size, config.eval.size, seed=config.train.seed)
    kwargs = dict(format=data.format, fields=data.fields or None, on_error=data.on_error)
    train = load_examples(data.source, split=data.split, limit=data.limit, **kwargs)
    if data.eval_source:
        return train, load_examples(data.eval_source, limit=config.eval.size, **kwargs)
    return split_holdout(train, config.eval.size, seed=config.train.seed)
