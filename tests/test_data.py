"""Tests of the data layer: answer extraction, adapters on the real GSM8K and MATH files, loaders
for every source kind and their error messages, holdout splits, chat rendering, the arithmetic task.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from hybridrft.data import (
    DEFAULT_ANSWER_INSTRUCTION,
    Example,
    arithmetic_splits,
    arithmetic_task,
    detect_format,
    fields_example,
    gsm8k_example,
    gsm8k_final_answer,
    last_boxed,
    load_examples,
    math_example,
    prompt_messages,
    render_prompt,
    split_holdout,
    verl_example,
)
from hybridrft.data.answers import strip_calculator_marks

LOADER_LOGGER = "hybridrft.data.loaders"


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def gsm8k_row(question: str, steps: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": f"{steps}\n#### {answer}"})


# --- answers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}}", "\\sqrt{\\frac{a}{b^{2}}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not end the group
        ("the answer is \\fbox{7}", "7"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\boxed{1} and finally \\fbox{3}", "3"),
        ("hence $\\boxed 2$.", "2"),
        ("$$\\boxed {17}.$$", "17"),
        ("\\boxed{ 42 }", "42"),
    ],
)
def test_last_boxed_finds_the_last_balanced_box(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box here",
        "\\boxed{\\frac{1}{2}",  # unbalanced: truncated generation
        "\\boxed{1} then \\boxed{2",  # the last box is unbalanced; the earlier one is not used
        "\\boxed{}",
        "\\boxedtext{5}",  # a different command
    ],
)
def test_last_boxed_returns_none_without_a_complete_box(text):
    assert last_boxed(text) is None


def test_gsm8k_final_answer_and_calculator_marks():
    assert gsm8k_final_answer("She pays 2*500 = <<2*500=1000>>1000.\n#### 1,000") == "1000"
    assert gsm8k_final_answer("#### 2,520,000 ") == "2520000"
    assert gsm8k_final_answer("a #### 1\n#### 7") == "7"
    assert gsm8k_final_answer("no marker") is None
    assert strip_calculator_marks("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


# --- GSM8K ---------------------------------------------------------------------------------------


def test_gsm8k_adapter_on_real_rows(shared_data):
    path = shared_data / "gsm8k" / "train.jsonl"
    with path.open(encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(20)]
    for index, row in enumerate(rows):
        example = gsm8k_example(row, index)
        expected = row["answer"].split("####")[-1].strip().replace(",", "")
        demo = example.demonstrations[0]
        assert example.id == f"gsm8k-{index}"
        assert example.prompt == row["question"]
        assert example.answer == expected
        assert "<<" not in demo and ">>" not in demo and "####" not in demo
        assert demo.endswith(f"\nThe answer is \\boxed{{{expected}}}.")
        assert last_boxed(demo) == expected
    first = gsm8k_example(rows[0], 0)
    assert first.answer == "72"
    assert first.demonstrations[0].startswith("Natalia sold 48/2 = 24 clips in May.")


def test_whole_gsm8k_file_loads(shared_data):
    examples = load_examples(str(shared_data / "gsm8k" / "train.jsonl"))
    assert len(examples) == 7473
    assert len({ex.id for ex in examples}) == 7473
    # Thousands separators are gone from every gold answer ("1,080" in the file).
    assert all(re.fullmatch(r"-?\d+", ex.answer) for ex in examples)
    assert any(ex.answer == "1080" for ex in examples)


def test_gsm8k_adapter_names_the_problem():
    with pytest.raises(ValueError, match="missing field 'question'"):
        gsm8k_example({"answer": "#### 3"}, 0)
    with pytest.raises(ValueError, match="####"):
        gsm8k_example({"question": "q?", "answer": "it is 3"}, 0)


def test_gsm8k_limit(shared_data):
    examples = load_examples(str(shared_data / "gsm8k" / "train.jsonl"), limit=10)
    assert [ex.id for ex in examples] == [f"gsm8k-{i}" for i in range(10)]


# --- MATH ----------------------------------------------------------------------------------------


def test_math_answers_of_hand_picked_rows(shared_data):
    examples = load_examples(str(shared_data / "math" / "train.jsonl"), limit=400)
    by_id = {ex.id: ex for ex in examples}
    # Expected values read from the file by hand.
    expected = {
        "data/math/train/algebra/0.json": "0",
        "data/math/train/algebra/1006.json": "(3, -1)",
        "data/math/train/algebra/1007.json": "[0,3)",
        "data/math/train/algebra/1011.json": "\\$42409",
        "data/math/train/algebra/1013.json": "k = \\frac{-33}{2}",  # nested braces
        "data/math/train/algebra/1397.json": "17",  # written `\boxed {17}`
    }
    for example_id, answer in expected.items():
        assert by_id[example_id].answer == answer
    first = by_id["data/math/train/algebra/0.json"]
    assert first.meta == {"level": "Level 5", "type": "Algebra"}
    assert first.prompt.startswith("Let \\[f(x) =")
    assert first.demonstrations[0].endswith("So $a+b=-3+3=\\boxed{0}$.")


def test_whole_math_file_loads_and_reports_skipped_rows(shared_data, caplog):
    path = str(shared_data / "math" / "train.jsonl")
    with caplog.at_level(logging.WARNING, logger=LOADER_LOGGER):
        examples = load_examples(path, on_error="skip")
    # Two solutions in the file end with an empty `\boxed{}` (number_theory/7115 and 7117).
    assert len(examples) == 7498
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipped 2 of 7500 rows in {path}" in warnings[0]
    assert "line 5342" in warnings[0] and "line 5344" in warnings[0]
    ids = {ex.id for ex in examples}
    assert "data/math/train/number_theory/7115.json" not in ids
    with pytest.raises(ValueError, match=r"train\.jsonl, line 5342: .*boxed"):
        load_examples(path)


def test_math_adapter_without_box():
    with pytest.raises(ValueError, match="boxed"):
        math_example({"problem": "p", "solution": "no answer"}, 3)
    assert math_example({"problem": "p", "solution": "\\boxed{4}"}, 3).id == "math-3"


# --- loaders: errors -----------------------------------------------------------------------------


def test_bad_json_line_names_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "broken.jsonl",
        [
            gsm8k_row("a?", "1+1=2", "2"),
            "",
            '{"question": "b?", "answer": ',
            gsm8k_row("c?", "x", "3"),
        ],
    )
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 3: invalid JSON"):
        load_examples(str(path))
    examples = load_examples(str(path), on_error="skip")
    assert [ex.prompt for ex in examples] == ["a?", "c?"]


def test_missing_field_raises_or_is_skipped_with_one_warning(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            gsm8k_row("a?", "1+1=2", "2"),
            json.dumps({"answer": "#### 5", "q": "b?"}),
            gsm8k_row("c?", "2+1=3", "3"),
            json.dumps({"question": "d?", "answer": "no final line"}),
        ],
    )
    with pytest.raises(ValueError, match=r"rows\.jsonl, line 2: missing field 'question'"):
        load_examples(str(path))
    with caplog.at_level(logging.WARNING, logger=LOADER_LOGGER):
        examples = load_examples(str(path), on_error="skip")
    assert [ex.answer for ex in examples] == ["2", "3"]
    assert [ex.id for ex in examples] == ["gsm8k-0", "gsm8k-2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipped 2 of 4 rows in {path}" in warnings[0]
    assert "line 2: missing field 'question'" in warnings[0] and "line 4:" in warnings[0]


def test_field_typo_suggests_the_right_column(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [json.dumps({"query": "1+1?", "gold": "2"})])
    with pytest.raises(ValueError) as error:
        load_examples(str(path), fields={"prompt": "qeury", "answer": "gold"})
    message = str(error.value)
    assert "'qeury'" in message and "custom.jsonl" in message
    assert "did you mean 'query'" in message and "['query', 'gold']" in message


def test_unknown_layout_without_fields_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", [json.dumps({"query": "1+1?", "gold": "2"})])
    with pytest.raises(ValueError, match=r"columns are \['query', 'gold'\]"):
        load_examples(str(path))


def test_missing_path_is_file_not_found(tmp_path):
    missing = tmp_path / "nope" / "data.jsonl"
    with pytest.raises(FileNotFoundError, match="data.jsonl"):
        load_examples(str(missing))
    with pytest.raises(FileNotFoundError, match="train.parquet"):
        load_examples("train.parquet")


def test_bad_options_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [gsm8k_row("a?", "s", "1")])
    with pytest.raises(ValueError, match="on_error"):
        load_examples(str(path), on_error="ignore")
    with pytest.raises(ValueError, match="unknown format"):
        load_examples(str(path), format="gsm")
    with pytest.raises(ValueError, match="did you mean 'prompt'"):
        load_examples(str(path), fields={"promt": "question", "answer": "answer"})


# --- loaders: other sources ----------------------------------------------------------------------


def test_parquet_with_field_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "uid": ["p1", "p2", "p3"],
            "query": ["What is 2+2?", "What is 3*3?", "What is 10/2?"],
            "gold": ["4", None, "5"],
            "solutions": [["2+2=4. \\boxed{4}", "Four: \\boxed{4}"], ["3*3=9, so \\boxed{9}"], None],
        }
    )
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    fields = {"prompt": "query", "answer": "gold", "demonstration": "solutions", "id": "uid"}
    examples = load_examples(str(path), fields=fields)
    assert [ex.id for ex in examples] == ["p1", "p2", "p3"]
    assert examples[0].demonstrations == ["2+2=4. \\boxed{4}", "Four: \\boxed{4}"]
    assert examples[1].answer == "9"  # no gold value: taken from the demonstration's box
    assert examples[2].demonstrations == [] and examples[2].answer == "5"
    # Round trip through the file: the same records come back as dicts.
    again = load_examples(str(path), format="fields", fields=fields)
    assert [ex.to_dict() for ex in again] == [ex.to_dict() for ex in examples]


def test_saved_datasets_folder(tmp_path):
    import datasets

    rows = [
        {"problem": f"What is {i}+{i}?", "solution": f"It is $\\boxed{{{2 * i}}}$."}
        for i in range(5)
    ]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    examples = load_examples(str(folder))
    assert [ex.answer for ex in examples] == ["0", "2", "4", "6", "8"]
    assert examples[0].id == "math-0"

    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
    ).save_to_disk(str(splits))
    assert len(load_examples(str(splits), split="test")) == 2
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_examples(str(splits), split="validation")


def test_fields_example_keeps_chat_prompts():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    example = fields_example({"msgs": messages, "ans": 2}, 7, {"prompt": "msgs", "answer": "ans"})
    assert example.prompt == messages and example.answer == "2" and example.id == "example-7"
    assert example.demonstrations == []
    with pytest.raises(ValueError, match="'ans' is missing"):
        fields_example({"msgs": messages}, 0, {"prompt": "msgs", "answer": "ans"})


def test_detect_format():
    assert detect_format(["question", "answer"]) == "gsm8k"
    assert detect_format(["problem", "solution", "level", "type", "id"]) == "math"
    assert detect_format(["prompt", "completion"]) == "fields"
    verl_columns = ["data_source", "prompt", "target", "ability", "reward_model", "extra_info"]
    assert detect_format(verl_columns) == "verl"
    assert detect_format(["prompt", "reward_model"]) == "verl"  # a validation file: no target


def test_example_dict_round_trip():
    example = Example(
        id="x1",
        prompt=[{"role": "user", "content": "2+2?"}],
        demonstrations=["2+2=4. The answer is \\boxed{4}."],
        answer="4",
        meta={"level": "Level 1"},
    )
    data = json.loads(json.dumps(example.to_dict()))
    assert Example.from_dict(data) == example
    with pytest.raises(ValueError, match="unknown Example field"):
        Example.from_dict({**data, "extra": 1})
    with pytest.raises(TypeError):
        Example(id="x", prompt="p", demonstrations="not a list", answer="1")


# --- verl (LUFFY / SRFT / HPT parquet) -----------------------------------------------------------

# The shape of Elliott/Openr1-Math-46k-8192 (openr1.parquet), as read by LUFFY's and
# Unify-Post-Training's `mix_src/rl_dataset_with_target.py`.
LUFFY_SYSTEM = "Your task is to follow a systematic, thorough reasoning process. Think first."


def verl_row(
    question: str,
    target: object,
    ground_truth: object,
    index: int | None,
    *,
    system: bool = True,
    reward_style: bool = True,
) -> dict:
    prompt = [{"role": "user", "content": question}]
    if system:
        prompt.insert(0, {"role": "system", "content": LUFFY_SYSTEM})
    reward_model = {"ground_truth": ground_truth}
    if reward_style:
        reward_model["style"] = "rule"
    return {
        "data_source": "openr1",
        "prompt": prompt,
        "target": target,
        "ability": "math",
        "reward_model": reward_model,
        "extra_info": {"index": index, "split": "default"},
    }


def assistant(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


VERL_ROWS = [
    verl_row(
        "What is 1/2 + 0?",
        assistant("<think>\nHalf plus nothing.\n</think>\n\nIt is $\\boxed{\\frac{1}{2}}$."),
        "\\frac{1}{2}",
        17,
    ),
    verl_row("What is 8*9?", assistant("8*9=72, so \\boxed{72}."), " 72 ", 3, system=False),
    verl_row(
        "What is 2+2?",
        [
            {"role": "assistant", "content": "2+2=4. \\boxed{4}"},
            {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "Four: \\boxed{4}"},
        ],
        "4",
        None,
    ),
]


def expected_verl_examples() -> list[Example]:
    system = {"role": "system", "content": LUFFY_SYSTEM}
    meta = {"data_source": "openr1", "ability": "math"}
    return [
        Example(
            id="17",
            prompt=[system, {"role": "user", "content": "What is 1/2 + 0?"}],
            demonstrations=[
                "<think>\nHalf plus nothing.\n</think>\n\nIt is $\\boxed{\\frac{1}{2}}$."
            ],
            answer="\\frac{1}{2}",
            meta=meta,
        ),
        Example(
            id="3",
            prompt=[{"role": "user", "content": "What is 8*9?"}],
            demonstrations=["8*9=72, so \\boxed{72}."],
            answer="72",
            meta=meta,
        ),
        Example(
            id="verl-2",  # no extra_info.index: the row's position
            prompt=[system, {"role": "user", "content": "What is 2+2?"}],
            demonstrations=["2+2=4. \\boxed{4}", "Four: \\boxed{4}"],  # every assistant message
            answer="4",
            meta=meta,
        ),
    ]


@pytest.mark.parametrize("format", ["verl", "auto"])
def test_verl_parquet_loads_as_is(tmp_path, format):
    path = write_parquet(tmp_path / "openr1.parquet", VERL_ROWS)
    assert load_examples(str(path), format=format) == expected_verl_examples()


def test_verl_rows_read_through_pandas_give_the_same_examples(tmp_path):
    """pandas gives nested columns as numpy arrays of dicts (as the reference loaders see them)."""
    import pandas as pd

    path = write_parquet(tmp_path / "openr1.parquet", VERL_ROWS)
    records = pd.read_parquet(path).to_dict("records")
    assert type(records[0]["prompt"]).__name__ == "ndarray"
    examples = [verl_example(row, index) for index, row in enumerate(records)]
    assert examples == expected_verl_examples()


def test_verl_adapter_accepts_text_targets_and_numeric_answers():
    row = verl_row("What is 8*9?", "8*9=72, so \\boxed{72}.", 72, 0)
    example = verl_example(row, 0)
    assert example.demonstrations == ["8*9=72, so \\boxed{72}."] and example.answer == "72"
    assert verl_example({**row, "reward_model": {"ground_truth": ["72"]}}, 0).answer == "72"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (None, "field 'target' is null"),
        ([], "field 'target' is an empty list"),
        ("  ", "field 'target' is empty"),
        (assistant(""), "field 'target[0].content' is empty"),
        ([{"role": "user", "content": "hi"}], "field 'target' has no assistant message"),
        (["just text"], "field 'target[0]' must be a chat message"),
    ],
)
def test_verl_adapter_rejects_bad_targets(target, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        verl_example(verl_row("q?", target, "1", 0), 0)


@pytest.mark.parametrize(
    ("reward_model", "message"),
    [
        ({"style": "rule"}, "field 'reward_model.ground_truth' is missing"),
        ({"ground_truth": " ", "style": "rule"}, "field 'reward_model.ground_truth' is empty"),
        ({"ground_truth": ["1", "2"]}, "field 'reward_model.ground_truth' holds 2 answers"),
        (None, "field 'reward_model' must be a dict"),
    ],
)
def test_verl_adapter_rejects_bad_ground_truth(reward_model, message):
    row = {**verl_row("q?", assistant("\\boxed{1}"), "1", 0), "reward_model": reward_model}
    with pytest.raises(ValueError, match=re.escape(message)):
        verl_example(row, 0)


@pytest.mark.parametrize(
    ("broken_row", "message"),
    [
        (
            verl_row("q?", assistant(""), "1", 1),
            "bad.parquet, row 2: field 'target[0].content' is empty",
        ),
        (
            verl_row("q?", assistant("\\boxed{1}"), None, 1),
            "bad.parquet, row 2: field 'reward_model.ground_truth' is missing",
        ),
    ],
)
def test_verl_bad_row_names_file_row_and_field(tmp_path, broken_row, message):
    path = write_parquet(tmp_path / "bad.parquet", [VERL_ROWS[0], broken_row, VERL_ROWS[1]])
    with pytest.raises(ValueError, match=re.escape(message)):
        load_examples(str(path), format="verl")


def test_verl_bad_rows_are_skipped_and_counted(tmp_path, caplog):
    rows = [
        VERL_ROWS[0],
        verl_row("q?", assistant(""), "1", 1),
        {**verl_row("q?", assistant("\\boxed{1}"), "1", 2), "reward_model": {"style": "rule"}},
        VERL_ROWS[1],
    ]
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with caplog.at_level(logging.WARNING, logger=LOADER_LOGGER):
        examples = load_examples(str(path), on_error="skip")
    assert examples == expected_verl_examples()[:2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipped 2 of 4 rows in {path}" in warnings[0]
    assert "row 2: field 'target[0].content' is empty" in warnings[0]
    assert "row 3: field 'reward_model.ground_truth' is missing" in warnings[0]


def test_verl_file_without_target_is_evaluation_data(tmp_path):
    """verl's validation parquets have no target column: prompts and answers, no demonstrations."""
    rows = [{k: v for k, v in row.items() if k != "target"} for row in VERL_ROWS]
    path = write_parquet(tmp_path / "valid.parquet", rows)
    examples = load_examples(str(path))
    expected = [replace(ex, demonstrations=[]) for ex in expected_verl_examples()]
    assert examples == expected


def test_verl_jsonl_row_that_lost_its_target_is_an_error(tmp_path):
    """In a source whose first row has a target, a later row without one is not evaluation data."""
    without_target = {k: v for k, v in VERL_ROWS[1].items() if k != "target"}
    lines = [json.dumps(VERL_ROWS[0]), json.dumps(without_target)]
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    with pytest.raises(ValueError, match=r"train\.jsonl, line 2: missing field 'target'"):
        load_examples(str(path))


# --- holdout -------------------------------------------------------------------------------------


def test_split_holdout_is_seeded_and_disjoint():
    examples = [
        Example(id=f"e{i}", prompt=f"p{i}", demonstrations=[], answer=str(i)) for i in range(50)
    ]
    train, heldout = split_holdout(examples, holdout=10, seed=7)
    train_again, heldout_again = split_holdout(examples, holdout=10, seed=7)
    _, heldout_other = split_holdout(examples, holdout=10, seed=8)
    assert len(train) == 40 and len(heldout) == 10
    assert [ex.id for ex in heldout] == [ex.id for ex in heldout_again]
    assert [ex.id for ex in train] == [ex.id for ex in train_again]
    assert {ex.id for ex in heldout} != {ex.id for ex in heldout_other}
    assert not {ex.id for ex in train} & {ex.id for ex in heldout}
    assert {ex.id for ex in train} | {ex.id for ex in heldout} == {ex.id for ex in examples}
    with pytest.raises(ValueError, match="holdout"):
        split_holdout(examples, holdout=51, seed=0)


# --- chat ----------------------------------------------------------------------------------------

PLAIN = Example(id="c1", prompt="What is 2+3?", demonstrations=[], answer="5")


def test_prompt_messages():
    messages = prompt_messages(PLAIN)
    expected_user = f"What is 2+3?\n\n{DEFAULT_ANSWER_INSTRUCTION}"
    assert messages == [{"role": "user", "content": expected_user}]
    with_system = prompt_messages(PLAIN, system_prompt="Be brief.", answer_instruction=None)
    assert with_system == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+3?"},
    ]

    chat = Example(
        id="c2",
        prompt=[
            {"role": "system", "content": "Own system."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "What is 1+1?"},
        ],
        demonstrations=[],
        answer="2",
    )
    messages = prompt_messages(chat, system_prompt="Ignored: one is present.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Own system."
    assert messages[1]["content"] == "Hi"
    assert messages[3]["content"] == f"What is 1+1?\n\n{DEFAULT_ANSWER_INSTRUCTION}"
    assert chat.prompt[3]["content"] == "What is 1+1?"  # the example itself is not modified


def test_render_prompt_with_chat_template(tiny_tokenizer):
    text = render_prompt(tiny_tokenizer, PLAIN, system_prompt="You are a helpful assistant.")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert f"<|im_start|>user\nWhat is 2+3?\n\n{DEFAULT_ANSWER_INSTRUCTION}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")

    without_system = render_prompt(tiny_tokenizer, PLAIN)
    assert without_system.startswith("<|im_start|>user\n")
    assert "system" not in without_system


def test_render_prompt_without_chat_template(tiny_tokenizer):
    base_tokenizer = copy.deepcopy(tiny_tokenizer)
    base_tokenizer.chat_template = None
    text = render_prompt(base_tokenizer, PLAIN, system_prompt="Be brief.")
    assert text == f"Be brief.\n\nWhat is 2+3?\n\n{DEFAULT_ANSWER_INSTRUCTION}\n"
    assert render_prompt(base_tokenizer, PLAIN, answer_instruction=None) == "What is 2+3?\n"


# --- arithmetic task -----------------------------------------------------------------------------

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPERATIONS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}


def check_arithmetic_example(example: Example, min_steps: int, max_steps: int) -> None:
    (demo,) = example.demonstrations
    *lines, closing = demo.split("\n")
    assert closing == f"The answer is \\boxed{{{example.answer}}}."
    assert last_boxed(demo) == example.answer
    assert min_steps <= len(lines) <= max_steps
    assert example.meta == {"task": "arithmetic", "steps": len(lines)}
    previous = None
    for line in lines:
        match = EQUATION.fullmatch(line)
        assert match, f"not an equation line: {line!r}"
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        if op == "/":
            assert left % right == 0
        assert OPERATIONS[op](left, right) == result, line
        assert 2 <= right <= (9 if op in "*/" else 20) and 0 < result <= 100
        assert previous is None or left == previous  # each step continues from the last result
        previous = result
    assert previous == int(example.answer)
    assert example.prompt.endswith("?")


def test_arithmetic_task_is_correct_and_seeded(tiny_tokenizer):
    examples = arithmetic_task(300, seed=3)
    for example in examples:
        check_arithmetic_example(example, 1, 2)
    assert [ex.id for ex in examples] == [f"arith-3-{i}" for i in range(300)]
    assert len({ex.prompt for ex in examples}) == 300
    again = arithmetic_task(300, seed=3)
    assert [ex.to_dict() for ex in again] == [ex.to_dict() for ex in examples]
    other = arithmetic_task(300, seed=4)
    assert len({ex.prompt for ex in examples} & {ex.prompt for ex in other}) < 30  # of 300
    # Varied templates: many different closing questions and all four operations.
    questions = {ex.prompt.rsplit(". ", 1)[-1] for ex in examples}
    assert len(questions) >= 15
    operators = {m[2] for ex in examples for m in EQUATION.finditer(ex.demonstrations[0])}
    assert operators == {"+", "-", "*", "/"}
    longest = max(len(tiny_tokenizer(ex.demonstrations[0])["input_ids"]) for ex in examples)
    assert longest < 60


def test_arithmetic_task_step_range():
    for example in arithmetic_task(100, seed=0, min_steps=3, max_steps=3):
        check_arithmetic_example(example, 3, 3)
    with pytest.raises(ValueError, match="min_steps"):
        arithmetic_task(1, seed=0, min_steps=3, max_steps=2)


def test_arithmetic_splits_are_disjoint():
    train, evaluation = arithmetic_splits(200, 50, seed=11)
    assert len(train) == 200 and len(evaluation) == 50
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in evaluation}
    assert not {ex.id for ex in train} & {ex.id for ex in evaluation}
    assert [ex.to_dict() for ex in train] == [ex.to_dict() for ex in arithmetic_task(200, seed=11)]
    again_train, again_eval = arithmetic_splits(200, 50, seed=11)
    assert [ex.prompt for ex in again_eval] == [ex.prompt for ex in evaluation]


def test_arithmetic_number_range_makes_harder_problems_within_its_bounds():
    import re

    from hybridrft.data.arithmetic import NumberRange, arithmetic_task

    wide = NumberRange(max_operand=60, max_factor=9, max_value=300)
    hard = arithmetic_task(200, seed=5, min_steps=3, max_steps=4, numbers=wide)
    values = [int(v) for e in hard for v in re.findall(r"\d+", e.demonstrations[0].replace("\\boxed", ""))]
    assert max(values) <= 300 and max(values) > 100  # larger than the default range allows, within the new one
    assert all(3 <= e.meta["steps"] <= 4 for e in hard)
    assert arithmetic_task(20, seed=5) == arithmetic_task(20, seed=5, numbers=NumberRange())  # the default is unchanged
    with pytest.raises(ValueError, match="max_operand <= max_value"):
        NumberRange(max_operand=50, max_value=40)
