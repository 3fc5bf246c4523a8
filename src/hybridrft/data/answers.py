"""Pure text helpers that find final answers in solutions (shared by data adapters and rewards)."""

from __future__ import annotations

import re

# `(?![A-Za-z])` keeps longer command names such as `\boxeda` from matching.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# The argument of an unbraced `\boxed 5`: one LaTeX command or one run of plain characters, as TeX
# itself would read a single-token argument.
_BARE_TOKEN = re.compile(r"\\[A-Za-z]+|[^\s$\\{}]+")
_CALCULATOR_MARK = re.compile(r"<<[^<>]*>>")
# A comma between digits followed by exactly three digits: "1,000" and "2,520,000", not "1,5".
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _braced_content(text: str, open_brace: int) -> str | None:
    """Content of the group that opens at `text[open_brace] == "{"`, or None if it never closes."""
    depth = 0
    i = open_brace
    while i < len(text):
        char = text[i]
        if char == "\\":
            # Escaped characters (`\{`, `\}`, `\\`) never open or close a group.
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in `text`.

    Nested braces are balanced, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. Returns None when
    there is no box, or when the last box is unbalanced or empty: a truncated answer is not an
    answer, and falling back to an earlier box would reward a solution for a value it abandoned.
    """
    matches = list(_BOX_COMMAND.finditer(text))
    if not matches:
        return None
    position = matches[-1].end()
    while position < len(text) and text[position].isspace():
        position += 1
    if position < len(text) and text[position] == "{":
        content = _braced_content(text, position)
        content = content.strip() if content is not None else None
        return content or None
    token = _BARE_TOKEN.match(text, position)
    if token is None:
        return None
    # "\boxed 5." ends a sentence; the period is not part of the answer.
    return token.group().rstrip(".,;") or token.group()


def gsm8k_final_answer(text: str) -> str | None:
    """The text after the last `####` of a GSM8K solution, with thousands separators removed."""
    marker = text.rfind("####")
    if marker < 0:
        return None
    return _THOUSANDS_COMMA.sub("", text[marker + 4 :].strip())


def strip_calculator_marks(text: str) -> str:
    """Remove GSM8K calculator annotations: `48/2 = <<48/2=24>>24` becomes `48/2 = 24`."""
    return _CALCULATOR_MARK.sub("", text)
