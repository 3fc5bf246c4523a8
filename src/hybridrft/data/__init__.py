"""The data layer: Example records, loaders, dataset adapters, chat rendering, a built-in task.

It imports only the config layer, so every layer above can depend on it.
"""

from hybridrft.data.adapters import (
    ADAPTERS,
    detect_format,
    fields_example,
    gsm8k_example,
    math_example,
    verl_example,
)
from hybridrft.data.answers import gsm8k_final_answer, last_boxed, strip_calculator_marks
from hybridrft.data.arithmetic import arithmetic_splits, arithmetic_task
from hybridrft.data.chat import (
    DEFAULT_ANSWER_INSTRUCTION,
    DEFAULT_SYSTEM_PROMPT,
    prompt_messages,
    render_prompt,
)
from hybridrft.data.example import Example
from hybridrft.data.loaders import load_examples, split_holdout
from hybridrft.data.run_data import BUILTIN_ARITHMETIC, load_run_examples

__all__ = [
    "ADAPTERS",
    "BUILTIN_ARITHMETIC",
    "DEFAULT_ANSWER_INSTRUCTION",
    "DEFAULT_SYSTEM_PROMPT",
    "Example",
    "arithmetic_splits",
    "arithmetic_task",
    "detect_format",
    "fields_example",
    "gsm8k_example",
    "gsm8k_final_answer",
    "last_boxed",
    "load_examples",
    "load_run_examples",
    "math_example",
    "prompt_messages",
    "render_prompt",
    "split_holdout",
    "strip_calculator_marks",
    "verl_example",
]
