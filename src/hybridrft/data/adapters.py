"""Adapters: one raw data row (a mapping of column -> value) in, one `Example` out.

Adapters raise `ValueError` with a message that names the offending field; the loader adds the
source file and row number, so the same adapters serve files, `datasets` objects and user code.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hybridrft.data.answers import gsm8k_final_answer, last_boxed, strip_calculator_marks
from hybridrft.data.example import Example

FIELD_KEYS = ("prompt", "answer", "demonstration", "id")


def required_text(row: Mapping[str, Any], name: str) -> str:
    """The text in column ``name``; missing, null, blank or not text is an error naming the field."""
    if name not in row or row[name] is None:
        present = ", ".join(map(str, row)) or "nothing"
        raise ValueError(f"missing field {name!r} (row has: {present})")
    value = row[name]
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field {name!r} is empty")
    return value


def row_id(row: Mapping[str, Any], id_field: str, default: str) -> str:
    """Column ``id_field`` as text, or ``default`` when it is missing, null or empty."""
    value = row.get(id_field)
    return default if value is None or value == "" else str(value)


def gsm8k_example(row: Mapping[str, Any], index: int) -> Example:
    """A GSM8K row (`question`, `answer` ending in `#### x`) as an Example.

    The demonstration drops the `<<a*b=c>>` calculator marks and the `#### x` line (neither is
    something we want a policy to imitate) and ends with `The answer is \\boxed{x}.`, the same
    answer format as every other task, so one reward scores rollouts and demonstrations alike.
    """
    question = required_text(row, "question")
    solution = required_text(row, "answer")
    answer = gsm8k_final_answer(solution)
    if answer is None:
        raise ValueError("field 'answer' has no '#### <final answer>' line")
    if not answer:
        raise ValueError("field 'answer' has an empty '####' line")
    steps = strip_calculator_marks(solution[: solution.rfind("####")]).rstrip()
    closing = f"The answer is \\boxed{{{answer}}}."
    demonstration = f"{steps}\n{closing}" if steps else closing
    return Example(
        id=row_id(row, "id", f"gsm8k-{index}"),
        prompt=question,
        demonstrations=[demonstration],
        answer=answer,
    )


def math_example(row: Mapping[str, Any], index: int) -> Example:
    """A MATH row (`problem`, `solution` with the answer in `\\boxed{}`, `level`, `type`)."""
    problem = required_text(row, "problem")
    solution = required_text(row, "solution")
    answer = last_boxed(solution)
    if answer is None:
        raise ValueError("field 'solution' has no non-empty, balanced \\boxed{} answer")
    meta = {key: row[key] for key in ("level", "type") if row.get(key) is not None}
    return Example(
        id=row_id(row, "id", f"math-{index}"),
        prompt=problem,
        demonstrations=[solution],
        answer=answer,
        meta=meta,
    )


def _as_list(value: Any) -> Any:
    """A tuple or numpy array (what pandas gives for a parquet list column) as a list; anything
    else unchanged, so a nested column reads the same whichever library read the file."""
    if isinstance(value, (str, bytes, Mapping)):
        return value
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
        return value.tolist()
    return value


def _is_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)
    )


def _prompt_value(row: Mapping[str, Any], column: str) -> str | list[dict[str, str]]:
    if column not in row or row[column] is None:
        raise ValueError(f"missing field {column!r} (row has: {', '.join(map(str, row))})")
    value = _as_list(row[column])
    if _is_chat(value):
        for position, message in enumerate(value):
            for key in ("role", "content"):
                if not isinstance(message[key], str):
                    got = type(message[key]).__name__
                    raise ValueError(f"field '{column}[{position}].{key}' must be text, got {got}")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError(
        f"field {column!r} must be non-empty text or a list of chat messages "
        f"({{'role': ..., 'content': ...}}), got {type(value).__name__}"
    )


def _demonstration_values(row: Mapping[str, Any], column: str) -> list[str]:
    """The demonstrations in `column`: one text or a list of texts. A null or blank text gives none
    (the loader counts such rows: a row may have no demonstration); a list that holds no text is an
    error (a list was meant to hold demonstrations), and so is anything else."""
    value = _as_list(row.get(column))
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list):
        raise ValueError(
            f"field {column!r} must be text or a list of texts, got {type(value).__name__}"
        )
    for position, item in enumerate(value):
        if item is not None and not isinstance(item, str):
            raise ValueError(
                f"field '{column}[{position}]' must be text, got {type(item).__name__}"
            )
    texts = [item for item in value if item and item.strip()]
    if not texts:
        raise ValueError(f"field {column!r} is an empty list (no demonstration text)")
    return texts


def _answer_value(row: Mapping[str, Any], column: str) -> str:
    """The gold answer in `column` as text ("" when null or missing); a number becomes text."""
    value = row.get(column)
    if value is None or (isinstance(value, float) and value != value):  # null, or pandas' NaN
        return ""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"field {column!r} must be text or a number, got {type(value).__name__}")
    return value.strip()


def check_field_mapping(fields: Mapping[str, str]) -> None:
    """Reject a `fields` mapping that cannot work, before any row is read."""
    import difflib

    for key in fields:
        if key not in FIELD_KEYS:
            close = difflib.get_close_matches(str(key), FIELD_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown key {key!r} in fields mapping (valid: {list(FIELD_KEYS)}){hint}"
            )
    if "prompt" not in fields:
        raise ValueError("the fields mapping needs a 'prompt' column")
    if "answer" not in fields and "demonstration" not in fields:
        raise ValueError(
            "the fields mapping needs an 'answer' column, or a 'demonstration' column whose "
            "text has the answer in \\boxed{}"
        )


def fields_example(row: Mapping[str, Any], index: int, fields: Mapping[str, str]) -> Example:
    """A row of any layout, through a mapping from Example fields to the row's column names.

    `fields` keys: "prompt" and "answer" (columns), optional "demonstration" (a column with one
    text or a list of texts) and "id". When the answer is not mapped or the row's answer is empty,
    the answer is the last `\\boxed{}` of the first demonstration that has one.
    """
    check_field_mapping(fields)
    prompt = _prompt_value(row, fields["prompt"])
    demo_column = fields.get("demonstration")
    demonstrations = _demonstration_values(row, demo_column) if demo_column else []

    answer_column = fields.get("answer")
    answer = _answer_value(row, answer_column) if answer_column else ""
    if not answer:
        boxed = (last_boxed(demo) for demo in demonstrations)
        answer = next((a for a in boxed if a), "")
    if not answer:
        if answer_column:
            present = "empty" if answer_column in row else "missing"
            reason = f"answer field {answer_column!r} is {present}"
        else:
            reason = "no answer field is mapped"
        raise ValueError(f"{reason} and no demonstration has a \\boxed{{}} answer")

    id_column = fields.get("id")
    example_id = row_id(row, id_column, f"example-{index}") if id_column else f"example-{index}"
    return Example(id=example_id, prompt=prompt, demonstrations=demonstrations, answer=answer)


VERL_TARGET = "target"


def _verl_demonstrations(value: Any) -> list[str]:
    """Every assistant message's content of a verl `target`, or the target itself if it is text.

    The reference loaders train on `target[0]["content"]`; a row holding several assistant messages
    gives one demonstration each, so none is silently dropped. Messages of other roles are not
    demonstrations and are ignored.
    """
    if value is None:
        raise ValueError(f"field {VERL_TARGET!r} is null")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"field {VERL_TARGET!r} is empty")
        return [value]
    value = _as_list(value)
    messages = [value] if isinstance(value, Mapping) else value
    if not isinstance(messages, list):
        raise ValueError(
            f"field {VERL_TARGET!r} must be text or a list of chat messages, "
            f"got {type(value).__name__}"
        )
    if not messages:
        raise ValueError(f"field {VERL_TARGET!r} is an empty list")
    demonstrations = []
    for position, message in enumerate(messages):
        where = f"{VERL_TARGET}[{position}]"
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(
                f"field {where!r} must be a chat message {{'role': ..., 'content': ...}}, "
                f"got {type(message).__name__}"
            )
        if message["role"] != "assistant":
            continue
        content = message.get("content")
        if content is None:
            raise ValueError(f"field '{where}.content' is missing")
        if not isinstance(content, str):
            raise ValueError(f"field '{where}.content' must be text, got {type(content).__name__}")
        if not content.strip():
            raise ValueError(f"field '{where}.content' is empty")
        demonstrations.append(content)
    if not demonstrations:
        roles = [message["role"] for message in messages]
        raise ValueError(f"field {VERL_TARGET!r} has no assistant message (roles: {roles})")
    return demonstrations


def _verl_ground_truth(row: Mapping[str, Any]) -> str:
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, Mapping):
        state = "missing" if reward_model is None else f"a {type(reward_model).__name__}"
        raise ValueError(f"field 'reward_model' must be a dict with 'ground_truth', got {state}")
    value = _as_list(reward_model.get("ground_truth"))
    if isinstance(value, list):  # verl's own GSM8K example stores the answer as a one-item list
        if len(value) > 1:
            raise ValueError(
                f"field 'reward_model.ground_truth' holds {len(value)} answers; expected one"
            )
        value = value[0] if value else ""
    if value is None:
        raise ValueError("field 'reward_model.ground_truth' is missing")
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(
            "field 'reward_model.ground_truth' must be text or a number, "
            f"got {type(value).__name__}"
        )
    if not value.strip():
        raise ValueError("field 'reward_model.ground_truth' is empty")
    return value.strip()


def _verl_id(value: Any) -> str:
    """`extra_info.index` as text, "" when absent. pandas turns an integer column with a null into
    floats (17 -> 17.0, null -> nan): an id must not change with the library that read the file."""
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if value != value:  # NaN
            return ""
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


def verl_example(row: Mapping[str, Any], index: int, *, require_target: bool = False) -> Example:
    """A verl RL row, as in the parquet that LUFFY, SRFT and HPT train on (Openr1-Math-46k-8192).

    Columns: `prompt` (chat messages, kept as the Example's prompt), `target` (the demonstration:
    a list of assistant messages, or text), `reward_model.ground_truth` (the gold answer),
    `data_source`, `ability` (kept in `meta`) and `extra_info.index` (the id; else `verl-<row>`).

    A row without a `target` key is evaluation data (verl's validation parquets have no target)
    and has no demonstrations; the trainer stops with its own error if a method needs one. A
    `target` that is present must hold a demonstration: a null or empty target in a training file
    is an error, not a prompt quietly trained without one. `require_target=True` (the loader sets
    it when the source's first row has a `target` column) makes a missing key an error too, so a
    JSON-lines row that lost its target is not taken for evaluation data.
    """
    prompt = _prompt_value(row, "prompt")
    if isinstance(prompt, list) and not any(m["role"] == "user" for m in prompt):
        roles = [m["role"] for m in prompt]
        raise ValueError(f"field 'prompt' has no user message (roles: {roles})")
    answer = _verl_ground_truth(row)
    if VERL_TARGET in row:
        demonstrations = _verl_demonstrations(row[VERL_TARGET])
    elif require_target:
        raise ValueError(f"missing field {VERL_TARGET!r} (row has: {', '.join(map(str, row))})")
    else:
        demonstrations = []

    extra_info = row.get("extra_info")
    raw_id = extra_info.get("index") if isinstance(extra_info, Mapping) else None
    example_id = _verl_id(raw_id) or f"verl-{index}"
    meta = {
        key: str(row[key])
        for key in ("data_source", "ability")
        if row.get(key) is not None and str(row[key]) != ""
    }
    return Example(
        id=example_id, prompt=prompt, demonstrations=demonstrations, answer=answer, meta=meta
    )


ADAPTERS: dict[str, Callable[[Mapping[str, Any], int], Example]] = {
    "gsm8k": gsm8k_example,
    "math": math_example,
    "verl": verl_example,
}

# Columns that identify a known layout; checked in this order. verl comes first: `reward_model`
# is specific to it, and its files may carry other columns (a copy of the question, say).
_FORMAT_COLUMNS = (
    ("verl", {"prompt", "reward_model"}),
    ("gsm8k", {"question", "answer"}),
    ("math", {"problem", "solution"}),
)


def required_columns(format: str) -> set[str]:
    """The columns a named format's adapter reads (empty for unknown formats)."""
    return next((set(cols) for name, cols in _FORMAT_COLUMNS if name == format), set())


def detect_format(columns: Iterable[str]) -> str:
    """"verl" for prompt+reward_model columns, "gsm8k" for question+answer, "math" for
    problem+solution, "fields" otherwise."""
    present = set(columns)
    for name, needed in _FORMAT_COLUMNS:
        if needed <= present:
            return name
    return "fields"
