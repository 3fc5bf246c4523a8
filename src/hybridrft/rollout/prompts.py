"""Examples to prompt token ids, the form every sampler takes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hybridrft.data import Example, render_prompt

logger = logging.getLogger(__name__)


@dataclass
class PromptSet:
    """Examples together with their prompts as token ids (rendered with the chat template)."""

    examples: list[Example]
    prompt_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.examples)


def encode_prompts(
    tokenizer,
    examples: list[Example],
    *,
    system_prompt: str | None,
    answer_instruction: str | None,
    max_prompt_tokens: int,
    source: str = "data",
) -> tuple[list[Example], list[list[int]]]:
    """Render each example with the chat template and tokenize it.

    Prompts longer than ``max_prompt_tokens`` are skipped, counted and reported in one warning,
    rather than truncated (a truncated problem statement is a different problem).
    """
    kept, ids, too_long = [], [], []
    for example in examples:
        text = render_prompt(tokenizer, example, system_prompt=system_prompt, answer_instruction=answer_instruction)
        tokens = tokenizer(text, add_special_tokens=False).input_ids
        if len(tokens) > max_prompt_tokens:
            too_long.append(example.id)
            continue
        kept.append(example)
        ids.append(tokens)
    if too_long:
        logger.warning(
            "skipped %d of %d prompts from %s longer than data.max_prompt_tokens=%d (first: %s)",
            len(too_long), len(examples), source, max_prompt_tokens, ", ".join(too_long[:5]),
        )
    return kept, ids


def prompt_set(tokenizer, examples: list[Example], data_config, source: str, *, required: bool = False) -> PromptSet:
    """``encode_prompts`` with a run's ``data`` settings; ``required``: an empty result is an error."""
    kept, ids = encode_prompts(
        tokenizer,
        examples,
        system_prompt=data_config.system_prompt,
        answer_instruction=data_config.answer_instruction,
        max_prompt_tokens=data_config.max_prompt_tokens,
        source=f"{source} ({data_config.source})",
    )
    if required and not kept:
        raise ValueError(f"no usable {source} in {data_config.source}")
    return PromptSet(kept, ids)
