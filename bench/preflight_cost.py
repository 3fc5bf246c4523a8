"""Seconds the checks before the model loads add to a run's start (docs/BENCHMARKS.md): loading the
training split, encoding its prompts (done anyway), and tokenizing every demonstration once for the
context-length check, on ../shared/data's GSM8K and MATH training splits with the SmolLM2 tokenizer.

    python bench/preflight_cost.py
"""

from __future__ import annotations

import time
from pathlib import Path

from hybridrft.config import load_config
from hybridrft.data import load_run_examples
from hybridrft.models import load_tokenizer
from hybridrft.rollout import prompt_set
from hybridrft.train.preflight import demonstration_lengths

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    for source in sorted(DATA.glob("*/train.jsonl")):
        config = load_config(overrides=[f"data.source={source}", "method=srft", "data.on_error=skip"])
        tokenizer = load_tokenizer(config.model.name_or_path)
        start = time.perf_counter()
        train, _ = load_run_examples(config)
        loaded = time.perf_counter()
        prompts = prompt_set(tokenizer, train, config.data, "training data")
        encoded = time.perf_counter()
        lengths = demonstration_lengths(tokenizer, prompts.examples, 1, config.data.max_demo_tokens)
        measured = time.perf_counter()
        print(f"{source.parent.name}: {len(prompts)} rows; load {loaded - start:.1f} s, prompts {encoded - loaded:.1f} s, "
              f"demonstration lengths {measured - encoded:.1f} s (longest {max(lengths)} tokens)")


if __name__ == "__main__":
    main()
